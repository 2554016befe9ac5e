"""Search an embedded catalog: text → molecules, molecule → molecules, molecule → texts.

`CatalogSearcher` composes the parts: a candidate strategy finds the exact top rows
(`engine.search.candidates`: streamed scan, ANN index re-scored exactly, or a device-resident copy),
scored by `engine.search.scoring` (MaxSim for a text, token-set similarity for a molecule, cosine
for pooled vectors); a SMARTS pattern (`engine.search.smarts`) is checked with RDKit on the
candidates, fetching more until k hits pass or the table is exhausted; the matching head can
re-rank the hits of a text query.

Filters: a SQL predicate on stored columns is pushed down to Lance (prefilter). Rows of other model
versions are never mixed in: their vectors live in another space.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.compute as pc
import torch

from mvclam.engine.search.candidates import (
    DEFAULT_NPROBES,
    Candidates,
    CatalogScope,
    IndexCandidates,
    ResidentCandidates,
    ScanCandidates,
)
from mvclam.engine.search.errors import SearchError
from mvclam.engine.search.index import TOKEN_COLUMN, token_index
from mvclam.engine.search.resident import ResidentTokens
from mvclam.engine.search.smarts import InProcessMatcher, SmartsMatcher, compile_smarts
from mvclam.engine.store import (
    PROPERTY_COLUMNS,
    CatalogTableNotFound,
    open_catalog_table,
    reading,
    sql_quote,
)
from mvclam.kernels import maxsim

if TYPE_CHECKING:
    import lancedb

    from mvclam.engine.models.mvclam import MVCLAM
    from mvclam.engine.views import MoleculeViews

__all__ = ["DEFAULT_NPROBES", "MAX_CANDIDATES", "MAX_K", "CatalogSearcher", "SearchError", "SearchHit"]

# A candidate strategy's bound `candidates(query, limit, where)`.
CandidateFn = Callable[[torch.Tensor, int, str | None], Candidates]

# Stored columns returned with each hit (vectors and views are internal; they stay on disk).
RESULT_COLUMNS = (
    "id",
    "input_smiles",
    "canonical_smiles",
    "inchikey",
    *PROPERTY_COLUMNS,
    "source",
    "model_name",
    "model_version",
)
# Of CAPTION_FIELDS, the ones a hit shows: the caption, who wrote it, and what its prompt cited.
CAPTION_COLUMNS = ("caption", "caption_model_version", "caption_references")
MAX_K = 1000
MAX_CANDIDATES = 20_000
# A long-lived searcher (the HTTP service) re-reads the table's latest version at most this often,
# so rows embedded or captioned and indexes built by nightly jobs show up without a restart.
REFRESH_SECONDS = 5.0


@dataclass
class SearchHit:
    id: str
    score: float  # exact MaxSim (cosine of the best query token); pooled cosine for `by="pooled"`
    best_token: int  # index of the molecule token that matched best (-1 for pooled search)
    columns: dict[str, Any] = field(default_factory=dict)
    match_probability: float | None = None  # set when re-ranked by the matching head

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "score": self.score,
            "best_token": self.best_token,
            "match_probability": self.match_probability,
            **{k: v for k, v in self.columns.items() if k != "id"},
        }


class CatalogSearcher:
    """Searches one LanceDB table written by `mvclam embed` with the model that embedded it."""

    def __init__(
        self,
        db: str | Path,
        table: str,
        model: MVCLAM | None = None,
        checkpoint: str | Path | None = None,
        refine_factor: int = 0,
        candidate_factor: int = 4,
        nprobes: int = DEFAULT_NPROBES,
        refresh_seconds: float = REFRESH_SECONDS,
        resident_device: str | torch.device | None = None,
        smarts_matcher: SmartsMatcher | None = None,
        smarts_timeout_s: float | None = None,
    ):
        """`resident_device` (e.g. ``"cuda"``): hold the table's tokens on that device and answer
        token queries by exact MaxSim over all of them, instead of the index or a streamed scan;
        the copy is loaded at the first query and again whenever the table's version changes.
        `smarts_matcher` checks a SMARTS filter (default: in this process) within
        `smarts_timeout_s` seconds per search (None: no bound), else SmartsTimeout."""
        from mvclam.engine.embedder import load_model

        try:
            self.table: lancedb.table.Table = open_catalog_table(db, table, refresh_seconds=refresh_seconds)
        except CatalogTableNotFound as error:
            raise SearchError(str(error)) from None
        self.model = model if model is not None else load_model(checkpoint)
        self.model.eval()
        self.version_filter = f"model_version = {sql_quote(self.model.model_version)}"
        with reading(self.table.uri):  # a damaged table: CatalogTableDamaged, with how to restore
            rows = self.table.count_rows(self.version_filter)
        if rows == 0:
            versions = self.stored_versions()
            raise SearchError(
                f"table {table!r} has no rows embedded by this model (version {self.model.model_version}); "
                f"it holds versions {versions}: search with the checkpoint that embedded it, or re-run "
                "`mvclam embed` with this model"
            )
        self.resident_device = torch.device(resident_device) if resident_device is not None else None
        self.smarts_matcher: SmartsMatcher = smarts_matcher or InProcessMatcher()
        self.smarts_timeout_s = smarts_timeout_s
        names = set(self.table.schema.names)
        self.result_columns = [c for c in (*RESULT_COLUMNS, *CAPTION_COLUMNS) if c in names]
        # The candidate strategies over this table's rows of this model version.
        self.scope = CatalogScope(self.table, self.version_filter, self.result_columns)
        self.index_source = IndexCandidates(self.scope, candidate_factor, nprobes, refine_factor)
        self.resident_source = (
            ResidentCandidates(self.scope, self.resident_device) if self.resident_device is not None else None
        )

    # The index path's settings live in its strategy; these read and set them there, per query.
    @property
    def nprobes(self) -> int:
        """IVF partitions probed at least, per query."""
        return self.index_source.nprobes

    @nprobes.setter
    def nprobes(self, value: int) -> None:
        self.index_source.nprobes = value

    @property
    def candidate_factor(self) -> int:
        return self.index_source.candidate_factor

    @candidate_factor.setter
    def candidate_factor(self, value: int) -> None:
        self.index_source.candidate_factor = value

    @property
    def refine_factor(self) -> int:
        return self.index_source.refine_factor

    @refine_factor.setter
    def refine_factor(self, value: int) -> None:
        self.index_source.refine_factor = value

    # ------------------------------------------------------------------ helpers
    def stored_versions(self) -> list[str]:
        versions = self.table.to_lance().to_table(columns=["model_version"])["model_version"]
        return sorted(set(pc.unique(versions).to_pylist()))

    def has_index(self) -> bool:
        with reading(self.table.uri):  # the first read of a search: a damaged manifest shows here
            return token_index(self.table) is not None

    def _where(self, where: str | None) -> str:
        return self.scope.where(where)

    @torch.inference_mode()
    def embed_query(self, text: str) -> torch.Tensor:
        if not text or not text.strip():
            raise SearchError("the query text is empty")
        return self.model.embed_texts([text])[0].float().cpu()

    # ------------------------------------------------------------------ candidate strategies
    def resident_tokens(self) -> ResidentTokens:
        """The device copy of this model version's tokens, (re)loaded if the table has moved on."""
        if self.resident_source is None:
            raise SearchError("this searcher holds no tokens on a device (resident_device is not set)")
        return self.resident_source.tokens()

    def _index_candidates(self, query: torch.Tensor, limit: int, where: str | None) -> Candidates:
        # A method of its own so that a subclass can replace the index path
        # (benchmarks/bench_search_fetch.py compares an earlier one).
        return self.index_source.candidates(query, limit, where)

    def _candidate_source(self, vector_column: str, exact: bool | None) -> CandidateFn:
        """The strategy answering a search: the resident copy (token queries unless
        ``exact=False``), else the ANN index (token queries unless ``exact``, when there is one),
        else the streamed scan (also every pooled search)."""
        if self.resident_source is not None and vector_column == TOKEN_COLUMN and exact is not False:
            return self.resident_source.candidates
        if vector_column == TOKEN_COLUMN and not exact and self.has_index():
            return self._index_candidates
        return ScanCandidates(self.scope, vector_column).candidates

    def _ranked(
        self,
        query: torch.Tensor,
        k: int,
        where: str | None,
        smarts: str | None,
        exact: bool | None,
        vector_column: str = TOKEN_COLUMN,
        smarts_matcher: SmartsMatcher | None = None,
    ) -> list[SearchHit]:
        if not 1 <= k <= MAX_K:
            raise SearchError(f"k must be between 1 and {MAX_K}, got {k}")
        pattern = compile_smarts(smarts)  # refused before any work
        candidates = self._candidate_source(vector_column, exact)
        limit = k if pattern is None else 4 * k
        deadline = None if self.smarts_timeout_s is None else time.monotonic() + self.smarts_timeout_s
        while True:
            ids, scores, best, rows = candidates(query, limit, where)
            hits = [
                SearchHit(id=i, score=float(s), best_token=int(b), columns=rows[i])
                for i, s, b in zip(ids, scores.tolist(), best.tolist(), strict=True)
                if i in rows
            ]
            exhausted = len(ids) < limit or limit >= MAX_CANDIDATES
            if smarts:  # pattern is not None
                smiles = [h.columns.get("canonical_smiles") for h in hits]
                found = (smarts_matcher or self.smarts_matcher).match(smarts, smiles, deadline)
                hits = [h for h, ok in zip(hits, found, strict=True) if ok]
            if len(hits) >= k or exhausted:
                return hits[:k]
            limit = min(MAX_CANDIDATES, limit * 4)

    # ------------------------------------------------------------------ public API
    def search_text(
        self,
        query: str,
        k: int = 10,
        where: str | None = None,
        smarts: str | None = None,
        exact: bool | None = None,
        rerank: bool = False,
        rerank_candidates: int = 20,
        smarts_matcher: SmartsMatcher | None = None,
    ) -> list[SearchHit]:
        """Molecules best described by `query`, by MaxSim; optionally re-ranked by the matching
        head. `smarts_matcher`: this search's SMARTS matcher instead of the searcher's."""
        vector = self.embed_query(query)
        limit = max(k, rerank_candidates) if rerank else k
        hits = self._ranked(vector, limit, where, smarts, exact, smarts_matcher=smarts_matcher)
        if rerank and hits:
            hits = self._rerank_by_matching(query, hits)
        return hits[:k]

    def search_molecule(
        self,
        smiles: str,
        k: int = 10,
        by: str = "tokens",
        where: str | None = None,
        smarts: str | None = None,
        exact: bool | None = None,
    ) -> list[SearchHit]:
        """Molecules similar to `smiles`: token-set similarity (mean over the query's tokens of its
        best match among the stored tokens), or cosine of the pooled vectors (`by="pooled"`)."""
        from mvclam.engine.views import ViewError, compute_views

        try:
            views = compute_views(smiles, self.model.config.views)
        except ViewError as error:
            raise SearchError(f"cannot embed {smiles!r}: {error}") from None
        return self.search_molecule_views(views, k, by, where, smarts, exact)

    def search_molecule_views(
        self,
        views: MoleculeViews,
        k: int = 10,
        by: str = "tokens",
        where: str | None = None,
        smarts: str | None = None,
        exact: bool | None = None,
        smarts_matcher: SmartsMatcher | None = None,
    ) -> list[SearchHit]:
        """`search_molecule` for views computed by the caller (e.g. outside a model lock, with a
        caller's own atom and time bounds)."""
        from mvclam.engine.embedder import MoleculeEmbedder

        embeddings = MoleculeEmbedder(self.model).embed_views([views])
        if by == "pooled":
            query, exact, column = embeddings.pooled[0].float(), True, "pooled"
        elif by == "tokens":
            query, column = embeddings.tokens[0].float(), TOKEN_COLUMN
        else:
            raise SearchError(f"by must be 'tokens' or 'pooled', got {by!r}")
        return self._ranked(query, k, where, smarts, exact, column, smarts_matcher)

    @torch.inference_mode()
    def rank_texts(self, smiles: str, texts: Sequence[str]) -> list[tuple[str, float]]:
        """Rank `texts` (e.g. stored captions, candidate labels) for one molecule by MaxSim."""
        from mvclam.engine.embedder import MoleculeEmbedder

        if not texts:
            return []
        embedder = MoleculeEmbedder(self.model)
        results, embeddings = embedder.embed_smiles([smiles])
        if results[0].error is not None:
            raise SearchError(f"cannot embed {smiles!r}: {results[0].error}")
        vectors = embedder.embed_texts(list(texts)).float()
        scores = maxsim(vectors, embeddings.tokens.float())[:, 0]
        order = torch.sort(scores, descending=True, stable=True).indices
        return [(texts[i], float(scores[i])) for i in order.tolist()]

    @torch.inference_mode()
    def _rerank_by_matching(self, query: str, hits: list[SearchHit]) -> list[SearchHit]:
        """The paper's second stage: the matching head reads (molecule, text) jointly, so it can
        overturn a MaxSim ordering; re-encodes the stored views (no conformer is recomputed)."""
        from mvclam.engine.store.lance_store import sql_in_list
        from mvclam.engine.views import VIEW_SCHEMA, collate_views, views_from_arrow

        ids = [h.id for h in hits]
        with reading(self.table.uri):
            table = self.table.to_lance().to_table(
                columns=["id", *VIEW_SCHEMA.names], filter=f"({sql_in_list(ids)}) AND ({self.version_filter})"
            )
        position = {i: n for n, i in enumerate(table["id"].to_pylist())}
        views = views_from_arrow(
            table.select(VIEW_SCHEMA.names).replace_schema_metadata(VIEW_SCHEMA.metadata)
        )
        ordered = [views[position[i]] for i in ids]
        device = next(self.model.parameters()).device
        probability = self.model.match_probability(collate_views(ordered).to(device), [query] * len(ordered))
        for hit, p in zip(hits, probability.tolist(), strict=True):
            hit.match_probability = float(p)
        return sorted(hits, key=lambda h: -(h.match_probability or 0.0))
