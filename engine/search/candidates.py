"""Candidate strategies: how a search finds its top `limit` rows before hits are built.

Every strategy is a :class:`CandidateSource`: ``candidates(query, limit, where)`` returns the best
`limit` rows of one :class:`CatalogScope` (a table, one model version) for a (D,) text vector or
(Q, D) query tokens, exactly scored (`engine.search.scoring`), best first, with their result
columns.

* :class:`ScanCandidates` (no index: small tables, or ``exact=True``; also pooled search): streams
  the vector column in Arrow batches and keeps a running top-k (`kernels.maxsim_topk` for a text).
* :class:`IndexCandidates` (the token column has an ANN index): LanceDB's multi-vector search with
  one query vector returns ``1 − max_j cos(q, d_j)``, an approximation of MaxSim; it over-fetches
  candidates, and the exact MaxSim re-scores them from the stored tokens.
* :class:`ResidentCandidates` (``resident_device``, e.g. a GPU for a long-lived service): every
  token is held on that device (`resident.ResidentTokens`) and scored per query, exact and used
  in place of the index.

A SQL predicate `where` on stored columns is evaluated by Lance (prefilter, or a row mask for the
resident copy); a bad one raises :class:`SearchError`. A table that cannot be read (a damaged or
missing file, an IO error) raises `CatalogTableDamaged` or `CatalogStorageError` instead, even with
a filter: a storage fault is never reported as the caller's mistake.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import pyarrow as pa
import torch

from mvclam.engine.search.errors import SearchError
from mvclam.engine.search.index import TOKEN_COLUMN
from mvclam.engine.search.resident import ResidentTokens
from mvclam.engine.search.scoring import (
    pooled_from_arrow,
    rescore_candidates,
    token_set_similarity,
    tokens_from_arrow,
)
from mvclam.engine.store import CatalogStorageError, storage_detail
from mvclam.engine.store.errors import damaged_table_error, is_damage
from mvclam.kernels import maxsim_topk

if TYPE_CHECKING:
    import lancedb

# LanceDB's multi-vector search returns fewer rows than asked when a molecule's tokens are
# near-duplicates unless it over-fetches per token (read once per process); the index strategy's
# adaptive-probe retry covers what remains.
os.environ.setdefault("LANCE_XTR_OVERFETCH", "64")

DEFAULT_NPROBES = 20  # LanceDB's default; more only when these hold fewer rows than the candidates asked


class Candidates(NamedTuple):
    """A strategy's top rows, best first: ids, (n,) scores, (n,) best token (-1 where none) and
    the result columns by id (an id missing there is not returned as a hit)."""

    ids: list[str]
    scores: torch.Tensor
    best: torch.Tensor
    rows: dict[str, dict[str, Any]]


class CandidateSource(Protocol):
    """One way of finding a search's candidates (see the module docstring)."""

    def candidates(self, query: torch.Tensor, limit: int, where: str | None) -> Candidates:
        """The exact top `limit` rows for `query` among those matching `where`."""
        ...


@dataclass(frozen=True)
class CatalogScope:
    """The rows a search may return: one table, the rows of one model version, and the stored
    columns a hit carries."""

    table: lancedb.table.Table
    version_filter: str
    result_columns: list[str]

    def where(self, where: str | None) -> str:
        """The Lance filter for `where` within this model version."""
        return self.version_filter if not where else f"({self.version_filter}) AND ({where})"

    def fetch(self, ids: Sequence[str], columns: Sequence[str]) -> dict[str, dict[str, Any]]:
        """`columns` of the rows with these ids (of this model version), by id."""
        if not ids:
            return {}
        from mvclam.engine.store.lance_store import sql_in_list

        with lance_reads(self, None):
            table = self.table.to_lance().to_table(
                columns=list(columns), filter=f"({sql_in_list(list(ids))}) AND ({self.version_filter})"
            )
        return {row["id"]: row for row in table.to_pylist()}


def read_error(error: Exception, where: str | None, uri: str) -> Exception:
    """What a Lance error raised while reading candidates is: a bad filter `where` (SearchError),
    only when there is one and the error is Lance's user-input error; otherwise a storage fault
    (CatalogTableDamaged when a file is damaged, else CatalogStorageError)."""
    if is_damage(error):
        return damaged_table_error(uri, error)
    if where and not isinstance(error, OSError) and "Invalid user input" in str(error):
        return SearchError(f"invalid filter {where!r}: {error}")
    return CatalogStorageError(f"the catalog table cannot be read: {storage_detail(error)}")


@contextmanager
def lance_reads(scope: CatalogScope, where: str | None) -> Iterator[None]:
    """Classifies the Lance errors of the reads inside (`read_error`); search errors pass."""
    try:
        yield
    except (SearchError, CatalogStorageError):
        raise
    except (OSError, ValueError, RuntimeError) as error:
        raise read_error(error, where, scope.table.uri) from error


def _no_candidates() -> Candidates:
    return Candidates([], torch.empty(0), torch.empty(0, dtype=torch.long), {})


@dataclass(frozen=True)
class ScanCandidates:
    """Streams (id, vectors) in Arrow batches; a running top-`limit` by exact score: MaxSim for a
    text, token-set similarity for query tokens, or cosine for a pooled `vector_column`."""

    scope: CatalogScope
    vector_column: str = TOKEN_COLUMN

    def _batches(self, where: str | None) -> Iterator[pa.RecordBatch]:
        # Only Lance's own reads are classified (a generator sees no error of its consumer).
        with lance_reads(self.scope, where):
            scanner = self.scope.table.to_lance().scanner(
                columns=["id", self.vector_column], filter=self.scope.where(where), batch_size=8192
            )
            yield from scanner.to_batches()

    def candidates(self, query: torch.Tensor, limit: int, where: str | None) -> Candidates:
        top_scores = torch.empty(0)
        top_best = torch.empty(0, dtype=torch.long)
        top_ids: list[str] = []
        for batch in self._batches(where):
            if batch.num_rows == 0:
                continue
            ids = batch.column("id").to_pylist()
            scores, index, best = self._batch_top(query, batch.column(self.vector_column), limit)
            merged_scores = torch.cat([top_scores, scores.float()])
            merged_best = torch.cat([top_best, best])
            merged_ids = top_ids + [ids[i] for i in index.tolist()]
            order = torch.sort(merged_scores, descending=True, stable=True).indices[:limit]
            top_scores, top_best = merged_scores[order], merged_best[order]
            top_ids = [merged_ids[i] for i in order.tolist()]
        return Candidates(top_ids, top_scores, top_best, self.scope.fetch(top_ids, self.scope.result_columns))

    def _batch_top(
        self, query: torch.Tensor, column: pa.Array, limit: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(scores, row index in the batch, best token or -1) of one batch's top `limit`."""
        if self.vector_column == TOKEN_COLUMN and query.ndim == 1:
            tokens = tokens_from_arrow(column)
            scores, index, best = maxsim_topk(query[None].to(tokens.dtype), tokens, k=limit)
            return scores[0], index[0], best[0]
        if self.vector_column == TOKEN_COLUMN:  # a token set: mean over its tokens of MaxSim
            tokens = tokens_from_arrow(column)
            scores, index = token_set_similarity(query, tokens).topk(min(limit, len(column)))
        else:  # pooled: one vector per row, plain cosine
            scores, index = (pooled_from_arrow(column) @ query).topk(min(limit, len(column)))
        return scores, index, torch.full_like(index, -1)


@dataclass  # not frozen: CatalogSearcher sets nprobes and the factors at run time
class IndexCandidates:
    """ANN candidates from the token index (one search per query vector), re-scored exactly from
    their stored tokens: MaxSim for a text, token-set similarity for a molecule.

    The ANN query returns row ids only; the candidates' tokens and result columns are then read
    in one take by row id, once for the union of all query vectors' candidates: a molecule
    query (one ANN query per token) took 20-54% less time than when each ANN query selected
    those columns itself; a text query costs the same either way (docs/benchmarks.md)."""

    scope: CatalogScope
    candidate_factor: int = 4  # ANN candidates per requested row
    nprobes: int = DEFAULT_NPROBES  # IVF partitions probed at least, per query
    refine_factor: int = 0  # > 1: LanceDB re-ranks refine_factor x limit rows by exact distance

    def candidates(
        self, query: torch.Tensor, limit: int, where: str | None, retry: bool = True
    ) -> Candidates:
        wanted = limit * self.candidate_factor
        row_ids: dict[int, None] = {}  # ordered set: candidates of all query vectors
        for vector in query if query.ndim == 2 else query[None]:
            with lance_reads(self.scope, where):
                found = self.ann_query(vector, wanted, where, adaptive=False)
                if found.num_rows < wanted:
                    # With many near-duplicate tokens k-means leaves empty partitions, and the
                    # ones nearest a text vector can be empty: then probe on until enough rows
                    # are found (slower, so only when the fixed probes came up short).
                    found = self.ann_query(vector, wanted, where, adaptive=True)
            row_ids.update(dict.fromkeys(found["_rowid"].to_pylist()))
        if not row_ids:
            return _no_candidates()
        columns = self.scope.result_columns
        with lance_reads(self.scope, None):
            rows = self.scope.table.take_row_ids(list(row_ids)).select([*columns, TOKEN_COLUMN]).to_arrow()
        if rows.num_rows < len(row_ids) and retry:
            # The table moved to a new version between the two reads (a compaction re-addresses
            # rows): search again on the new version.
            return self.candidates(query, limit, where, retry=False)
        ids = rows["id"].to_pylist()
        scores, best, order = rescore_candidates(query, tokens_from_arrow(rows[TOKEN_COLUMN]), limit)
        top_ids = [ids[i] for i in order.tolist()]
        top_rows = rows.select(columns).take(pa.array(order.numpy())).to_pylist()
        return Candidates(top_ids, scores[order], best[order], dict(zip(top_ids, top_rows, strict=True)))

    def ann_query(self, vector: torch.Tensor, limit: int, where: str | None, adaptive: bool) -> pa.Table:
        """Row ids (and ``_distance``) of the ANN top `limit` for one query vector."""
        # Row ids only (naming _distance silences a warning): the caller reads the candidates'
        # columns in one take for all its query vectors.
        builder = (
            self.scope.table.search(vector.numpy(), vector_column_name=TOKEN_COLUMN)
            .distance_type("cosine")
            .where(self.scope.where(where), prefilter=True)
            .limit(limit)
            .with_row_id(True)
            .select(["_distance"])
        )
        if self.refine_factor > 1:
            builder = builder.refine_factor(self.refine_factor)
        if adaptive:
            builder = builder.minimum_nprobes(self.nprobes).maximum_nprobes(0)
        else:
            builder = builder.nprobes(self.nprobes)
        return builder.to_arrow()


class ResidentCandidates:
    """Exact top `limit` over a device copy of the scope's tokens; a filter is evaluated by Lance on
    the stored columns and applied as a row mask. The copy is loaded at the first query and again
    whenever the table's version changes."""

    def __init__(self, scope: CatalogScope, device: torch.device):
        self.scope = scope
        self.device = device
        self._copy: ResidentTokens | None = None

    def tokens(self) -> ResidentTokens:
        """The device copy of the scope's tokens, (re)loaded if the table has moved on."""
        if self._copy is None or self._copy.version != self.scope.table.version:
            self._copy = None  # free the old copy first: two may not fit on the device
            try:
                with lance_reads(self.scope, None):
                    self._copy = ResidentTokens.load(self.scope.table, self.scope.version_filter, self.device)
            except torch.OutOfMemoryError as error:
                raise SearchError(
                    f"the table's tokens do not fit in {self.device} memory: search without "
                    f"resident_device (index or streamed exact path) ({error})"
                ) from error
        return self._copy

    def candidates(
        self, query: torch.Tensor, limit: int, where: str | None, retry: bool = True
    ) -> Candidates:
        resident = self.tokens()
        allowed = None
        if where:
            with lance_reads(self.scope, where):
                matching = self.scope.table.to_lance().to_table(
                    columns=[], with_row_id=True, filter=self.scope.where(where)
                )["_rowid"]
            allowed = resident.mask(matching.to_numpy())
        row_ids, scores, best = resident.top(query, limit, allowed)
        if len(row_ids) == 0:
            return Candidates([], scores, best, {})
        with lance_reads(self.scope, None):
            rows = (
                self.scope.table.take_row_ids(row_ids.tolist())
                .select(self.scope.result_columns)
                .with_row_id()
                .to_arrow()
            )
        if rows.num_rows < len(row_ids) and retry:
            # The table moved to a new version since the copy was read: reload and search again.
            self._copy = None
            return self.candidates(query, limit, where, retry=False)
        by_row_id = dict(
            zip(rows["_rowid"].to_pylist(), rows.drop_columns(["_rowid"]).to_pylist(), strict=True)
        )
        found = [i for i, row_id in enumerate(row_ids.tolist()) if row_id in by_row_id]
        columns = [by_row_id[int(row_ids[i])] for i in found]
        ids = [c["id"] for c in columns]
        keep = torch.as_tensor(found, dtype=torch.long)
        return Candidates(ids, scores[keep], best[keep], dict(zip(ids, columns, strict=True)))
