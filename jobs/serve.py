"""``mvclam serve``: a JSON search API and a search page over one catalog table (FastAPI + uvicorn).

    mvclam serve --db catalog_db --table molecules [--model CKPT] [--host 127.0.0.1] [--port 8000]

Endpoints: ``GET /`` (the page), ``GET /health``, ``POST /api/search`` (text → molecules),
``POST /api/similar`` (molecule → molecules), ``GET /openapi.json`` and ``/docs``.

Clients never send SQL or paths: filters are (column, operator, number) triples on a fixed list of
property columns, turned into a predicate here; text, SMILES and SMARTS have length limits and k
is bounded. One lock serialises model calls: a CPU model gains nothing from concurrent forwards.
"""

from __future__ import annotations

import threading
from importlib import resources
from typing import Any, Literal

from pydantic import BaseModel, Field

from mvclam.engine.search import CatalogSearcher, SearchError, SearchHit

MAX_K = 100
FILTER_COLUMNS = ("mw", "logp", "hbd", "hba", "tpsa", "rotatable_bonds", "heavy_atoms")
Operator = Literal["<", "<=", ">", ">=", "="]


class PropertyFilter(BaseModel):
    column: Literal["mw", "logp", "hbd", "hba", "tpsa", "rotatable_bonds", "heavy_atoms"]
    op: Operator
    value: float = Field(ge=-1e6, le=1e6)

    def sql(self) -> str:
        return f"{self.column} {self.op} {float(self.value)!r}"


class SearchRequest(BaseModel):
    query: str = Field(min_length=1, max_length=500, description="natural-language description")
    k: int = Field(default=12, ge=1, le=MAX_K)
    filters: list[PropertyFilter] = Field(default_factory=list, max_length=len(FILTER_COLUMNS) * 2)
    smarts: str | None = Field(default=None, max_length=200, description="required substructure")
    rerank: bool = Field(default=False, description="re-rank the top 20 with the matching head")
    depict: bool = Field(default=True, description="include an SVG depiction per result")


class SimilarRequest(BaseModel):
    smiles: str = Field(min_length=1, max_length=500)
    k: int = Field(default=12, ge=1, le=MAX_K)
    by: Literal["tokens", "pooled"] = "tokens"
    filters: list[PropertyFilter] = Field(default_factory=list, max_length=len(FILTER_COLUMNS) * 2)
    smarts: str | None = Field(default=None, max_length=200)
    depict: bool = True


class Hit(BaseModel):
    id: str
    score: float
    best_token: int
    match_probability: float | None = None
    canonical_smiles: str | None = None
    inchikey: str | None = None
    mw: float | None = None
    logp: float | None = None
    hbd: int | None = None
    hba: int | None = None
    tpsa: float | None = None
    rotatable_bonds: int | None = None
    heavy_atoms: int | None = None
    caption: str | None = None
    svg: str | None = None


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


def create_app(searcher: CatalogSearcher):
    """The FastAPI application serving `searcher` (one table, one model)."""
    import time

    from fastapi import FastAPI, HTTPException
    from fastapi.responses import HTMLResponse

    app = FastAPI(title="mvclam search", version="1", description="Text → molecule search with MV-CLAM.")
    lock = threading.Lock()
    page = resources.files("mvclam.engine.search").joinpath("web/index.html").read_text(encoding="utf-8")

    def run(call):
        started = time.perf_counter()
        try:
            with lock:
                hits = call()
        except SearchError as error:
            raise HTTPException(status_code=400, detail=str(error)) from error
        return hits, time.perf_counter() - started

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> str:
        return page

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "table": searcher.table.name,
            "rows": searcher.table.count_rows(),
            "model_version": searcher.model.model_version,
            "index": searcher.has_index(),
            # Where exact search holds the tokens (null: index or streamed scan).
            "resident_device": str(searcher.resident_device) if searcher.resident_device else None,
        }

    @app.post("/api/search", response_model=SearchResponse)
    def search(request: SearchRequest) -> SearchResponse:
        hits, seconds = run(
            lambda: searcher.search_text(
                request.query,
                k=request.k,
                where=_where(request.filters),
                smarts=request.smarts,
                rerank=request.rerank,
            )
        )
        return SearchResponse(results=_hits(hits, request.depict), seconds=seconds)

    @app.post("/api/similar", response_model=SearchResponse)
    def similar(request: SimilarRequest) -> SearchResponse:
        hits, seconds = run(
            lambda: searcher.search_molecule(
                request.smiles,
                k=request.k,
                by=request.by,
                where=_where(request.filters),
                smarts=request.smarts,
            )
        )
        return SearchResponse(results=_hits(hits, request.depict), seconds=seconds)

    return app


def serve(
    db: str,
    table: str,
    model: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    **searcher_options: Any,
) -> None:
    """Serve the API and web page; ``searcher_options`` go to CatalogSearcher (e.g. nprobes)."""
    import uvicorn

    searcher = CatalogSearcher(db, table, checkpoint=model, **searcher_options)
    uvicorn.run(create_app(searcher), host=host, port=port, log_level="info")
