"""``mvclam serve``: a JSON search API and a search page over one catalog table (FastAPI + uvicorn).

    mvclam serve --db catalog_db --table molecules [--model CKPT] [--host 127.0.0.1] [--port 8000]

Endpoints: ``GET /`` (the page), ``GET /health``, ``POST /api/search`` (text → molecules),
``POST /api/similar`` (molecule → molecules), ``GET /openapi.json`` and ``/docs``.

Clients never send SQL or paths: filters are (column, operator, number) triples on the stored
property columns, turned into a predicate here (integer columns get integer literals with the same
meaning); text, SMILES and SMARTS have length limits, k is a bounded integer and bodies are at most
`max_body_bytes`. Every error is a short JSON ``{"detail": ...}``: the searcher's own messages quote
internal expressions and Lance's source paths, so they are logged here and never sent.

One lock serialises model calls and table scans: a CPU model gains nothing from concurrent
forwards. A client molecule's views (RDKit, seconds for a large one) are computed outside it, with
a bounded atom count and ETKDG time, so molecule requests never hold up text search. SMARTS
filters are matched outside it too, in a worker process killed at the request's deadline
(`smarts_timeout_s`), since RDKit's matching is exponential for some patterns.

Statuses: 400 a request the searcher refuses (invalid filter, SMILES or SMARTS); 408 a SMARTS
filter that did not finish matching in time; 413 a body over the limit; 422 an invalid request
or a SMARTS pattern over the complexity limits (engine/search/smarts.py); 429 (with Retry-After)
no free slot for a client molecule's views within `molecule_wait_s`; 503 the catalog table cannot
be read (damaged or unreadable storage); 500 anything else.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from importlib import resources
from typing import Annotated, Any, Literal

import pyarrow as pa
from pydantic import AfterValidator, BaseModel, Field, create_model

from mvclam.engine.search import CatalogSearcher, SearchError, SearchHit
from mvclam.engine.search.smarts import SmartsTimeout, SmartsTooComplex, SmartsWorker
from mvclam.engine.store import PROPERTY_FIELDS, CatalogStorageError, reading
from mvclam.engine.views import MoleculeViews, ViewConfig, ViewError, compute_views

log = logging.getLogger("mvclam.serve")

MAX_K = 100
# Clients may filter on exactly the stored property columns (engine/search/index.py indexes them).
FILTER_COLUMNS: tuple[str, ...] = tuple(f.name for f in PROPERTY_FIELDS)
# (min, max) of the integer columns: Lance compares them with integer literals of their range only.
INTEGER_RANGES: dict[str, tuple[int, int]] = {
    f.name: (-(2 ** (f.type.bit_width - 1)), 2 ** (f.type.bit_width - 1) - 1)
    for f in PROPERTY_FIELDS
    if pa.types.is_signed_integer(f.type)
}
MAX_BODY_BYTES = 64 * 1024
MAX_REQUEST_ATOMS = 100  # heavy atoms of a client molecule; a nested 151-atom SMILES took 17-56 s
REQUEST_EMBED_TIMEOUT_S = 5  # per ETKDG attempt for a client molecule (then the 2D fallback)
MOLECULE_WAIT_S = 30.0  # how long a molecule request waits for a free views slot before a 429
SMARTS_TIMEOUT_S = 2.0  # SMARTS matching per request, waiting for the worker included, before a 408
Operator = Literal["<", "<=", ">", ">=", "="]
FilterColumn = Literal[FILTER_COLUMNS]  # type: ignore[valid-type]


def _utf8(text: str | None) -> str | None:
    # JSON may carry a lone surrogate ("\ud800"), which no UTF-8 tokenizer or encoder accepts.
    if text is not None:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("text must be valid Unicode (no lone surrogates)") from None
    return text


Text = Annotated[str, AfterValidator(_utf8)]


def _integer_predicate(column: str, op: str, value: float) -> str:
    """`column op value` for an integer column with an integer literal and the exact meaning of
    the comparison: x < 4.5 is x <= 4, x > 4.5 is x >= 5, x = 4.5 holds for no row; a bound past
    the column's range is clamped to it (Lance rejects an out-of-range literal)."""
    low, high = INTEGER_RANGES[column]
    if op == "=":
        integral = value == math.floor(value) and low <= value <= high
        return f"{column} = {int(value)}" if integral else "FALSE"
    if op in ("<", "<="):
        bound = math.ceil(value) - 1 if op == "<" else math.floor(value)
        return "FALSE" if bound < low else f"{column} <= {min(bound, high)}"
    bound = math.floor(value) + 1 if op == ">" else math.ceil(value)
    return "FALSE" if bound > high else f"{column} >= {max(bound, low)}"


class PropertyFilter(BaseModel):
    column: FilterColumn
    op: Operator
    value: float = Field(ge=-1e6, le=1e6, strict=True, allow_inf_nan=False)

    def sql(self) -> str:
        if self.column in INTEGER_RANGES:
            return _integer_predicate(self.column, self.op, self.value)
        return f"{self.column} {self.op} {float(self.value)!r}"


class SearchRequest(BaseModel):
    query: Text = Field(min_length=1, max_length=500, description="natural-language description")
    k: int = Field(default=12, ge=1, le=MAX_K, strict=True)
    filters: list[PropertyFilter] = Field(default_factory=list, max_length=len(FILTER_COLUMNS) * 2)
    smarts: Text | None = Field(default=None, max_length=200, description="required substructure")
    rerank: bool = Field(default=False, strict=True, description="re-rank the top 20 with the matching head")
    depict: bool = Field(default=True, strict=True, description="include an SVG depiction per result")


class SimilarRequest(BaseModel):
    smiles: Text = Field(min_length=1, max_length=500)
    k: int = Field(default=12, ge=1, le=MAX_K, strict=True)
    by: Literal["tokens", "pooled"] = "tokens"
    filters: list[PropertyFilter] = Field(default_factory=list, max_length=len(FILTER_COLUMNS) * 2)
    smarts: Text | None = Field(default=None, max_length=200)
    depict: bool = Field(default=True, strict=True)


class CitedReference(BaseModel):
    """A described molecule that a caption's prompt cited (its id in the reference set)."""

    id: str
    similarity: float


# One search result: the score, identity, every stored property column (PROPERTY_FIELDS), the
# caption and its provenance.
Hit = create_model(
    "Hit",
    id=(str, ...),
    score=(float, ...),
    best_token=(int, ...),
    match_probability=(float | None, None),
    canonical_smiles=(str | None, None),
    inchikey=(str | None, None),
    **{f.name: ((int if pa.types.is_integer(f.type) else float) | None, None) for f in PROPERTY_FIELDS},
    caption=(str | None, None),
    caption_references=(list[CitedReference] | None, None),
    svg=(str | None, None),
)


class SearchResponse(BaseModel):
    results: list[Hit]
    seconds: float


def _where(filters: list[PropertyFilter]) -> str | None:
    return " AND ".join(f.sql() for f in filters) or None


def _hits(hits: list[SearchHit], depict: bool) -> list[Hit]:
    from mvclam.engine.search.depict import molecule_svg

    out = []
    for hit in hits:
        data: dict[str, Any] = {k: v for k, v in hit.to_dict().items() if k in Hit.model_fields}
        if depict and hit.columns.get("canonical_smiles"):
            data["svg"] = molecule_svg(hit.columns["canonical_smiles"])
        out.append(Hit(**data))
    return out


# Searcher messages that may be shown as they begin; any other becomes the generic one.
_PUBLIC_ERRORS = (
    ("invalid filter", "invalid filter"),
    ("invalid SMARTS", "invalid SMARTS pattern"),
    ("the query text is empty", "the query text is empty"),
)


def _public_message(error: SearchError) -> str:
    text = str(error)
    return next((public for prefix, public in _PUBLIC_ERRORS if text.startswith(prefix)), "search failed")


def _validation_message(errors: list[dict[str, Any]]) -> str:
    """The first validation error as one line: where and what, without the echoed input."""
    if not errors:
        return "invalid request"
    first = errors[0]
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or "body"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"invalid request: {where}: {first.get('msg', 'invalid value')}{more}"[:300]


def _error_body(message: str) -> bytes:
    # "replace": a message must never fail to encode (surrogates), or the error becomes a 500.
    return json.dumps({"detail": message}).encode("utf-8", "replace")


def _search_refusal(error: SearchError) -> tuple[int, str]:
    """(status, public message) of a search the searcher refused."""
    if isinstance(error, SmartsTimeout):
        return 408, f"{error}: simplify the SMARTS pattern or narrow the search with filters"[:300]
    if isinstance(error, SmartsTooComplex):
        return 422, str(error)[:300]  # the searcher's own limits, no internals
    return 400, _public_message(error)


class _RequestSmarts:
    """The SMARTS matcher of one request: in the worker process, by the request's deadline, and
    outside the model lock, which the searcher is called under (`run`): other searches go on
    while RDKit works."""

    def __init__(self, worker: SmartsWorker, lock: threading.Lock, deadline: float):
        self.worker, self.lock, self.deadline = worker, lock, deadline

    def match(self, smarts: str, smiles: Sequence[str | None], deadline: float | None) -> list[bool]:
        bound = self.deadline if deadline is None else min(deadline, self.deadline)
        self.lock.release()
        try:
            return self.worker.match(smarts, smiles, bound)
        finally:
            self.lock.acquire()


def request_view_config(base: ViewConfig, max_atoms: int, embed_timeout_s: int) -> ViewConfig:
    """The model's view config, bounded for molecules sent by clients: at most `max_atoms` atoms
    and `embed_timeout_s` seconds per ETKDG attempt (a catalog job may wait longer, a request not)."""
    timeout = min(base.embed_timeout_s, embed_timeout_s) if base.embed_timeout_s else embed_timeout_s
    return dataclasses.replace(base, max_atoms=min(base.max_atoms, max_atoms), embed_timeout_s=timeout)


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` gets a 413 before anything parses it. The
    declared Content-Length is checked first and the bytes actually received are counted too
    (chunked bodies declare none); bodies within the limit are buffered and replayed to the app."""

    def __init__(
        self, app: Callable[[Scope, Receive, Send], Awaitable[None]], max_bytes: int = MAX_BODY_BYTES
    ):
        self.app = app
        self.max_bytes = max_bytes

    async def _reject(self, send: Send, status: int, message: str) -> None:
        body = _error_body(message)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = f"request body too large (limit {self.max_bytes} bytes)"
        declared = dict(scope.get("headers", ())).get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                await self._reject(send, 400, "invalid Content-Length")
                return
            if length > self.max_bytes:
                await self._reject(send, 413, too_large)
                return
        buffered: list[Message] = []
        received = 0
        while True:
            message = await receive()
            buffered.append(message)
            if message["type"] != "http.request":
                break  # the client went away: the app sees the disconnect
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                await self._reject(send, 413, too_large)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return buffered.pop(0) if buffered else await receive()

        await self.app(scope, replay, send)


def create_app(
    searcher: CatalogSearcher,
    max_body_bytes: int = MAX_BODY_BYTES,
    max_request_atoms: int = MAX_REQUEST_ATOMS,
    request_embed_timeout_s: int = REQUEST_EMBED_TIMEOUT_S,
    molecule_workers: int = 1,
    molecule_wait_s: float = MOLECULE_WAIT_S,
    smarts_timeout_s: float = SMARTS_TIMEOUT_S,
):
    """The FastAPI application serving `searcher` (one table, one model). `molecule_workers`
    client molecules have their views computed at a time; others wait up to `molecule_wait_s`.
    A SMARTS filter gets `smarts_timeout_s` seconds of matching per request."""
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, Response

    smarts_worker = SmartsWorker(start=False)  # started with the server; lazily without one

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        smarts_worker.start()
        yield
        smarts_worker.close()

    app = FastAPI(
        title="mvclam search",
        version="1",
        description="Text → molecule search with MV-CLAM.",
        lifespan=lifespan,
    )
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    model_lock = threading.Lock()  # model forwards and table scans
    molecule_slots = threading.BoundedSemaphore(molecule_workers)  # RDKit views of client molecules
    view_config = request_view_config(searcher.model.config.views, max_request_atoms, request_embed_timeout_s)
    retry_after = str(max(1, math.ceil(request_embed_timeout_s)))  # about one client molecule's views
    page = resources.files("mvclam.engine.search").joinpath("web/index.html").read_text(encoding="utf-8")

    def error_response(status: int, message: str) -> Response:
        return Response(_error_body(message), status_code=status, media_type="application/json")

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> Response:
        return error_response(422, _validation_message(list(error.errors())))

    @app.exception_handler(CatalogStorageError)
    async def storage_error(request: Request, error: CatalogStorageError) -> Response:
        # The message names the damage and the recovery: for the operator (logged), not the client.
        log.error("catalog table cannot be read: %s", error)
        return error_response(503, "storage error: the catalog table cannot be read")

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> Response:
        # Starlette re-raises after this response, so the server logs the traceback.
        return error_response(500, "internal error")

    def run(
        call: Callable[[_RequestSmarts], list[SearchHit]], started: float
    ) -> tuple[list[SearchHit], float]:
        """`call(smarts matcher)` under the model lock; the matcher releases it while matching."""
        smarts = _RequestSmarts(smarts_worker, model_lock, time.monotonic() + smarts_timeout_s)
        try:
            with model_lock:
                hits = call(smarts)
        except SearchError as error:
            log.warning("search refused: %s", error)  # the full text quotes internals: logged only
            status, message = _search_refusal(error)
            raise HTTPException(status_code=status, detail=message) from None
        return hits, time.perf_counter() - started

    def molecule_views(smiles: str) -> MoleculeViews:
        if not molecule_slots.acquire(timeout=molecule_wait_s):
            # 429: the client's signal to back off; a 5xx would say the server is broken.
            raise HTTPException(
                status_code=429,
                detail="busy with other molecules: retry later",
                headers={"Retry-After": retry_after},
            )
        try:
            return compute_views(smiles, view_config)
        except ViewError as error:
            raise HTTPException(status_code=400, detail=f"cannot embed the molecule: {error}"[:300]) from None
        except Exception:
            log.exception("views of a request molecule failed")
            raise HTTPException(status_code=400, detail="cannot embed the molecule") from None
        finally:
            molecule_slots.release()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> str:
        return page

    @app.get("/health")
    def health() -> dict[str, Any]:
        with reading(searcher.table.uri):  # a damaged table: 503, not a 500
            rows = searcher.table.count_rows()
        return {
            "status": "ok",
            "table": searcher.table.name,
            "rows": rows,
            "model_version": searcher.model.model_version,
            "index": searcher.has_index(),
            # Where exact search holds the tokens (null: index or streamed scan).
            "resident_device": str(searcher.resident_device) if searcher.resident_device else None,
        }

    @app.post("/api/search", response_model=SearchResponse)
    def search(request: SearchRequest) -> SearchResponse:
        hits, seconds = run(
            lambda smarts_matcher: searcher.search_text(
                request.query,
                k=request.k,
                where=_where(request.filters),
                smarts=request.smarts,
                rerank=request.rerank,
                smarts_matcher=smarts_matcher,
            ),
            time.perf_counter(),
        )
        return SearchResponse(results=_hits(hits, request.depict), seconds=seconds)

    @app.post("/api/similar", response_model=SearchResponse)
    def similar(request: SimilarRequest) -> SearchResponse:
        started = time.perf_counter()
        views = molecule_views(request.smiles)  # outside the model lock
        where = _where(request.filters)

        def call(smarts_matcher: _RequestSmarts) -> list[SearchHit]:
            return searcher.search_molecule_views(
                views, request.k, request.by, where, request.smarts, smarts_matcher=smarts_matcher
            )

        hits, seconds = run(call, started)
        return SearchResponse(results=_hits(hits, request.depict), seconds=seconds)

    return app


def serve(
    db: str,
    table: str,
    model: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_body_bytes: int = MAX_BODY_BYTES,
    max_request_atoms: int = MAX_REQUEST_ATOMS,
    request_embed_timeout_s: int = REQUEST_EMBED_TIMEOUT_S,
    molecule_workers: int = 1,
    molecule_wait_s: float = MOLECULE_WAIT_S,
    smarts_timeout_s: float = SMARTS_TIMEOUT_S,
    **searcher_options: Any,
) -> None:
    """Serve the API and web page; ``searcher_options`` go to CatalogSearcher (e.g. nprobes)."""
    import uvicorn

    searcher = CatalogSearcher(db, table, checkpoint=model, **searcher_options)
    app = create_app(
        searcher,
        max_body_bytes=max_body_bytes,
        max_request_atoms=max_request_atoms,
        request_embed_timeout_s=request_embed_timeout_s,
        molecule_workers=molecule_workers,
        molecule_wait_s=molecule_wait_s,
        smarts_timeout_s=smarts_timeout_s,
    )
    uvicorn.run(app, host=host, port=port, log_level="info")
