"""Search an embedded catalog: text → molecules, molecule → molecules, molecule → texts.

Two candidate paths, one exact scorer:

* index path (the token column has an ANN index): LanceDB's multi-vector search with one query
  vector returns ``1 − max_j cos(q, d_j)``, an approximation of MaxSim; it over-fetches candidates
  and refines them, then the exact MaxSim (the `kernels.maxsim` dispatch: Triton on GPUs, torch
  otherwise) re-scores them from the stored tokens.
* exact path (no index: small tables, or ``exact=True``): the token column is streamed in Arrow
  batches and scored with `kernels.maxsim_topk`, keeping a running top-k; or, with
  ``resident_device`` (a GPU for a long-lived service), every token is held on that device and
  scored per query (`resident.ResidentTokens`), exact and used in place of the index.

Filters: a SQL predicate on stored columns is pushed down to Lance (prefilter); a SMARTS pattern is
checked with RDKit on candidates, fetching more candidates until k hits pass or the table is
exhausted. Rows of other model versions are never mixed in: their vectors live in another space.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import torch

from mvclam.engine.search.index import TOKEN_COLUMN, token_index
from mvclam.kernels import maxsim, maxsim_topk

if TYPE_CHECKING:
    import lancedb

    from mvclam.engine.models.mvclam import MVCLAM
    from mvclam.engine.search.resident import ResidentTokens
    from mvclam.engine.views import MoleculeViews

# LanceDB's multi-vector search returns fewer rows than asked when a molecule's tokens are
# near-duplicates unless it over-fetches per token (read once per process); the searcher's
# adaptive-probe retry covers what remains.
os.environ.setdefault("LANCE_XTR_OVERFETCH", "64")

# Stored columns returned with each hit (vectors and views are internal; they stay on disk).
RESULT_COLUMNS = (
    "id",
    "input_smiles",
    "canonical_smiles",
    "inchikey",
    "mw",
    "logp",
    "hbd",
    "hba",
    "tpsa",
    "rotatable_bonds",
    "heavy_atoms",
    "source",
    "model_name",
    "model_version",
)
CAPTION_COLUMNS = ("caption", "caption_model_version")
MAX_K = 1000
MAX_CANDIDATES = 20_000
# A long-lived searcher (the HTTP service) re-reads the table's latest version at most this often,
# so rows embedded or captioned and indexes built by nightly jobs show up without a restart.
REFRESH_SECONDS = 5.0
DEFAULT_NPROBES = 20  # LanceDB's default; more only when these hold fewer rows than the candidates asked


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


class SearchError(ValueError):
    """A search that cannot be answered as asked (bad filter, SMARTS, SMILES or model mismatch)."""


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _tokens_from_arrow(column: pa.ChunkedArray | pa.Array) -> torch.Tensor:
    """list<fixed_size_list<T, D>> (fixed K per row) → (M, K, D) tensor without per-row Python work."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    rows = len(column)
    inner = column.flatten()
    dim = inner.type.list_size
    values = inner.flatten().to_numpy(zero_copy_only=False)
    if rows == 0:
        return torch.empty(0, 0, dim)
    with warnings.catch_warnings():  # Arrow buffers are read-only; the tokens are only ever read
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(values.reshape(rows, -1, dim))


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
    ):
        """`resident_device` (e.g. ``"cuda"``): hold the table's tokens on that device and answer
        token queries by exact MaxSim over all of them, instead of the index or a streamed scan;
        the copy is loaded at the first query and again whenever the table's version changes."""
        import lancedb

        from mvclam.engine.embedder import load_model

        self.db = lancedb.connect(str(db), read_consistency_interval=timedelta(seconds=refresh_seconds))
        if table not in self.db.table_names():
            raise SearchError(f"no table {table!r} in {db} (tables: {sorted(self.db.table_names())})")
        self.table: lancedb.table.Table = self.db.open_table(table)
        self.model = model if model is not None else load_model(checkpoint)
        self.model.eval()
        self.refine_factor = refine_factor
        self.candidate_factor = candidate_factor
        self.nprobes = nprobes  # IVF partitions probed at least, per query
        self.version_filter = f"model_version = {_quote(self.model.model_version)}"
        if self.table.count_rows(self.version_filter) == 0:
            versions = self.stored_versions()
            raise SearchError(
                f"table {table!r} has no rows embedded by this model (version {self.model.model_version}); "
                f"it holds versions {versions}: search with the checkpoint that embedded it, or re-run "
                "`mvclam embed` with this model"
            )
        self.resident_device = torch.device(resident_device) if resident_device is not None else None
        self._resident: ResidentTokens | None = None
        names = set(self.table.schema.names)
        self.result_columns = [c for c in (*RESULT_COLUMNS, *CAPTION_COLUMNS) if c in names]

    # ------------------------------------------------------------------ helpers
    def stored_versions(self) -> list[str]:
        versions = self.table.to_lance().to_table(columns=["model_version"])["model_version"]
        return sorted(set(pc.unique(versions).to_pylist()))

    def has_index(self) -> bool:
        return token_index(self.table) is not None

    def _where(self, where: str | None) -> str:
        return self.version_filter if not where else f"({self.version_filter}) AND ({where})"

    @torch.inference_mode()
    def embed_query(self, text: str) -> torch.Tensor:
        if not text or not text.strip():
            raise SearchError("the query text is empty")
        return self.model.embed_texts([text])[0].float().cpu()

    def _fetch(self, ids: Sequence[str], columns: Sequence[str]) -> dict[str, dict[str, Any]]:
        if not ids:
            return {}
        from mvclam.engine.store.lance_store import sql_in_list

        table = self.table.to_lance().to_table(
            columns=list(columns), filter=f"({sql_in_list(list(ids))}) AND ({self.version_filter})"
        )
        return {row["id"]: row for row in table.to_pylist()}

    # ------------------------------------------------------------------ candidate stages
    def _exact_candidates(
        self, query: torch.Tensor, limit: int, where: str | None, vector_column: str = TOKEN_COLUMN
    ) -> tuple[list[str], torch.Tensor, torch.Tensor]:
        """Streams (id, tokens) in Arrow batches; a running top-`limit` by exact MaxSim."""
        dataset = self.table.to_lance()
        try:
            scanner = dataset.scanner(
                columns=["id", vector_column], filter=self._where(where), batch_size=8192
            )
            batches = scanner.to_batches()
            top_scores = torch.empty(0)
            top_best = torch.empty(0, dtype=torch.long)
            top_ids: list[str] = []
            for batch in batches:
                if batch.num_rows == 0:
                    continue
                ids = batch.column("id").to_pylist()
                if vector_column == TOKEN_COLUMN and query.ndim == 1:
                    tokens = _tokens_from_arrow(batch.column(vector_column))
                    scores, index, best = maxsim_topk(query[None].to(tokens.dtype), tokens, k=limit)
                    scores, index, best = scores[0], index[0], best[0]
                elif vector_column == TOKEN_COLUMN:  # a token set: mean over its tokens of MaxSim
                    tokens = _tokens_from_arrow(batch.column(vector_column))
                    scores, index = token_set_similarity(query, tokens).topk(min(limit, len(ids)))
                    best = torch.full_like(index, -1)
                else:  # pooled: one vector per row, plain cosine
                    pooled = torch.from_numpy(
                        batch.column(vector_column)
                        .flatten()
                        .to_numpy(zero_copy_only=False)
                        .reshape(batch.num_rows, -1)
                    ).float()
                    all_scores = pooled @ query
                    scores, index = all_scores.topk(min(limit, len(ids)))
                    best = torch.full_like(index, -1)
                merged_scores = torch.cat([top_scores, scores.float()])
                merged_best = torch.cat([top_best, best])
                merged_ids = top_ids + [ids[i] for i in index.tolist()]
                order = torch.sort(merged_scores, descending=True, stable=True).indices[:limit]
                top_scores, top_best = merged_scores[order], merged_best[order]
                top_ids = [merged_ids[i] for i in order.tolist()]
        except (OSError, ValueError) as error:  # Lance reports bad filters as ValueError/OSError
            raise SearchError(f"invalid filter {where!r}: {error}") from error
        return top_ids, top_scores, top_best

    def _index_candidates(
        self, query: torch.Tensor, limit: int, where: str | None, retry: bool = True
    ) -> tuple[list[str], torch.Tensor, torch.Tensor, dict[str, dict[str, Any]]]:
        """ANN candidates from the token index (one search per query vector), re-scored exactly
        from their stored tokens: MaxSim for a text, token-set similarity for a molecule. Also
        returns the result columns of the top `limit`.

        The ANN query returns row ids only; the candidates' tokens and result columns are then read
        in one take by row id, once for the union of all query vectors' candidates: a molecule
        query (one ANN query per token) took 20-54% less time than when each ANN query selected
        those columns itself; a text query costs the same either way (docs/benchmarks.md)."""
        wanted = limit * self.candidate_factor
        row_ids: dict[int, None] = {}  # ordered set: candidates of all query vectors
        for vector in query if query.ndim == 2 else query[None]:
            try:
                found = self._ann_query(vector, wanted, where, adaptive=False)
                if found.num_rows < wanted:
                    # With many near-duplicate tokens k-means leaves empty partitions, and the
                    # ones nearest a text vector can be empty: then probe on until enough rows
                    # are found (slower, so only when the fixed probes came up short).
                    found = self._ann_query(vector, wanted, where, adaptive=True)
            except (OSError, ValueError, RuntimeError) as error:
                raise SearchError(f"invalid filter {where!r}: {error}") from error
            row_ids.update(dict.fromkeys(found["_rowid"].to_pylist()))
        if not row_ids:
            return [], torch.empty(0), torch.empty(0, dtype=torch.long), {}
        rows = self.table.take_row_ids(list(row_ids)).select([*self.result_columns, TOKEN_COLUMN]).to_arrow()
        if rows.num_rows < len(row_ids) and retry:
            # The table moved to a new version between the two reads (a compaction re-addresses
            # rows): search again on the new version.
            return self._index_candidates(query, limit, where, retry=False)
        ids = rows["id"].to_pylist()
        scores, best, order = rescore_candidates(query, _tokens_from_arrow(rows[TOKEN_COLUMN]), limit)
        top_ids = [ids[i] for i in order.tolist()]
        columns = rows.select(self.result_columns).take(pa.array(order.numpy())).to_pylist()
        return top_ids, scores[order], best[order], dict(zip(top_ids, columns, strict=True))

    def resident_tokens(self) -> ResidentTokens:
        """The device copy of this model version's tokens, (re)loaded if the table has moved on."""
        if self.resident_device is None:
            raise SearchError("this searcher holds no tokens on a device (resident_device is not set)")
        if self._resident is None or self._resident.version != self.table.version:
            from mvclam.engine.search.resident import ResidentTokens

            self._resident = None  # free the old copy first: two may not fit on the device
            try:
                self._resident = ResidentTokens.load(self.table, self.version_filter, self.resident_device)
            except torch.OutOfMemoryError as error:
                raise SearchError(
                    f"the table's tokens do not fit in {self.resident_device} memory: search without "
                    f"resident_device (index or streamed exact path) ({error})"
                ) from error
        return self._resident

    def _resident_candidates(
        self, query: torch.Tensor, limit: int, where: str | None, retry: bool = True
    ) -> tuple[list[str], torch.Tensor, torch.Tensor, dict[str, dict[str, Any]]]:
        """Exact top `limit` over the device copy; a filter is evaluated by Lance on the stored
        columns and applied as a row mask. Also returns the result columns of the hits."""
        resident = self.resident_tokens()
        allowed = None
        if where:
            try:
                matching = self.table.to_lance().to_table(
                    columns=[], with_row_id=True, filter=self._where(where)
                )["_rowid"]
            except (OSError, ValueError) as error:
                raise SearchError(f"invalid filter {where!r}: {error}") from error
            allowed = resident.mask(matching.to_numpy())
        row_ids, scores, best = resident.top(query, limit, allowed)
        if len(row_ids) == 0:
            return [], scores, best, {}
        rows = self.table.take_row_ids(row_ids.tolist()).select(self.result_columns).with_row_id().to_arrow()
        if rows.num_rows < len(row_ids) and retry:
            # The table moved to a new version since the copy was read: reload and search again.
            self._resident = None
            return self._resident_candidates(query, limit, where, retry=False)
        by_row_id = dict(
            zip(rows["_rowid"].to_pylist(), rows.drop_columns(["_rowid"]).to_pylist(), strict=True)
        )
        found = [i for i, row_id in enumerate(row_ids.tolist()) if row_id in by_row_id]
        columns = [by_row_id[int(row_ids[i])] for i in found]
        ids = [c["id"] for c in columns]
        keep = torch.as_tensor(found, dtype=torch.long)
        return ids, scores[keep], best[keep], dict(zip(ids, columns, strict=True))

    def _ann_query(self, vector: torch.Tensor, limit: int, where: str | None, adaptive: bool) -> pa.Table:
        # Row ids only (naming _distance silences a warning): the caller reads the candidates'
        # columns in one take for all its query vectors.
        builder = (
            self.table.search(vector.numpy(), vector_column_name=TOKEN_COLUMN)
            .distance_type("cosine")
            .where(self._where(where), prefilter=True)
            .limit(limit)
            .with_row_id(True)
            .select(["_distance"])
        )
        if self.refine_factor > 1:  # LanceDB re-ranks refine_factor x limit rows by exact distance
            builder = builder.refine_factor(self.refine_factor)
        if adaptive:
            builder = builder.minimum_nprobes(self.nprobes).maximum_nprobes(0)
        else:
            builder = builder.nprobes(self.nprobes)
        return builder.to_arrow()

    def _ranked(
        self,
        query: torch.Tensor,
        k: int,
        where: str | None,
        smarts: str | None,
        exact: bool | None,
        vector_column: str = TOKEN_COLUMN,
    ) -> list[SearchHit]:
        if not 1 <= k <= MAX_K:
            raise SearchError(f"k must be between 1 and {MAX_K}, got {k}")
        pattern = _compile_smarts(smarts)
        use_resident = (
            self.resident_device is not None and vector_column == TOKEN_COLUMN and exact is not False
        )
        use_index = not use_resident and vector_column == TOKEN_COLUMN and not exact and self.has_index()
        limit = k if pattern is None else 4 * k
        while True:
            if use_resident:
                ids, scores, best, rows = self._resident_candidates(query, limit, where)
            elif use_index:
                ids, scores, best, rows = self._index_candidates(query, limit, where)
            else:
                ids, scores, best = self._exact_candidates(query, limit, where, vector_column)
                rows = self._fetch(ids, self.result_columns)
            hits = [
                SearchHit(id=i, score=float(s), best_token=int(b), columns=rows[i])
                for i, s, b in zip(ids, scores.tolist(), best.tolist(), strict=True)
                if i in rows
            ]
            exhausted = len(ids) < limit or limit >= MAX_CANDIDATES
            if pattern is not None:
                hits = [h for h in hits if _matches(pattern, h.columns.get("canonical_smiles"))]
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
    ) -> list[SearchHit]:
        """Molecules best described by `query`, by MaxSim; optionally re-ranked by the matching head."""
        vector = self.embed_query(query)
        hits = self._ranked(vector, max(k, rerank_candidates) if rerank else k, where, smarts, exact)
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
    ) -> list[SearchHit]:
        """`search_molecule` for views computed by the caller (e.g. outside a model lock, with a
        caller's own atom and time bounds)."""
        from mvclam.engine.embedder import MoleculeEmbedder

        embeddings = MoleculeEmbedder(self.model).embed_views([views])
        if by == "pooled":
            return self._ranked(
                embeddings.pooled[0].float(), k, where, smarts, exact=True, vector_column="pooled"
            )
        if by != "tokens":
            raise SearchError(f"by must be 'tokens' or 'pooled', got {by!r}")
        return self._ranked(embeddings.tokens[0].float(), k, where, smarts, exact)

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


def exact_scores(query: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact scores of (M, K, D) tokens for a (D,) text vector (MaxSim) or (Q, D) query tokens
    (token-set similarity) → ((M,) scores, (M,) best token, -1 for token sets), on tokens' device."""
    if query.ndim == 1:
        scores, best = maxsim(query[None].to(tokens.dtype), tokens, return_argmax=True)
        return scores[0], best[0]
    best = torch.full((len(tokens),), -1, dtype=torch.long, device=tokens.device)
    return token_set_similarity(query, tokens), best


def rescore_candidates(
    query: torch.Tensor, tokens: torch.Tensor, limit: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`exact_scores` of candidate tokens and the indices of the top `limit` (ties in row order)."""
    scores, best = exact_scores(query, tokens)
    return scores, best, torch.sort(scores, descending=True, stable=True).indices[:limit]


def token_set_similarity(query_tokens: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """(Q, D) query tokens against (M, K, D) stored tokens → (M,) mean over query tokens of MaxSim
    (ColBERT's late interaction between two token sets)."""
    return maxsim(query_tokens.to(tokens.dtype), tokens).mean(dim=0)


def _compile_smarts(smarts: str | None):
    if not smarts:
        return None
    from rdkit import Chem

    pattern = Chem.MolFromSmarts(smarts)
    if pattern is None:
        raise SearchError(f"invalid SMARTS {smarts!r}")
    return pattern


def _matches(pattern, smiles: str | None) -> bool:
    from rdkit import Chem

    mol = Chem.MolFromSmiles(smiles) if smiles else None
    return mol is not None and mol.HasSubstructMatch(pattern)
