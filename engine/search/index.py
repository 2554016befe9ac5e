"""ANN index management for the multi-vector `tokens` column of an embedded catalog.

Why these defaults (lancedb 0.40, 32 tokens x 256 dims per molecule, 2 CPU cores): IVF_PQ loses
most of the recall on 256-d tokens (recall@10 0.28-0.39 against exact MaxSim at 20k molecules), so
the tokens are scalar-quantised. IVF_SQ reaches recall@10 0.99 at 100k molecules once the searcher
re-scores its candidates exactly, and builds in ~6 min; an IVF_HNSW_SQ build of the same table had
not finished after 22 min. IVF_RQ (1 bit per dimension) is 5.6x smaller than IVF_SQ at 1M molecules
but kept only 0.68-0.80 of the true top 10 among its candidates. Hence IVF_SQ by default
(docs/benchmarks.md). Multi-vector indexes accept only cosine, which is MaxSim on L2-normalised
tokens. Below `brute_force_rows` an index is pure overhead: the exact scan is fast and has perfect
recall, so no index is built (and a stale one is dropped).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from mvclam.engine.store import optimize_table
from mvclam.engine.store.schema import PROPERTY_FIELDS

if TYPE_CHECKING:
    import lancedb

TOKEN_COLUMN = "tokens"
INDEX_TYPES = ("IVF_HNSW_SQ", "IVF_SQ", "IVF_RQ", "IVF_PQ", "IVF_FLAT", "IVF_HNSW_PQ", "IVF_HNSW_FLAT")
_INDEX_CONFIGS = {  # lancedb.index class names
    "IVF_HNSW_SQ": "IvfHnswSq",
    "IVF_SQ": "IvfSq",
    "IVF_RQ": "IvfRq",
    "IVF_PQ": "IvfPq",
    "IVF_FLAT": "IvfFlat",
    "IVF_HNSW_PQ": "IvfHnswPq",
    "IVF_HNSW_FLAT": "IvfHnswFlat",
}
BRUTE_FORCE_ROWS = 50_000
DEFAULT_INDEX_TYPE = "IVF_SQ"
# Scalar indexes that make filters and id lookups cheap: BTREE for ranges and equality,
# BITMAP for low-cardinality strings. Every property column is one clients may filter on
# (jobs/serve.py), so the list comes from the one property schema.
SCALAR_INDEXES: dict[str, str] = {
    "id": "BTREE",
    "model_version": "BITMAP",
    **{f.name: "BTREE" for f in PROPERTY_FIELDS},
}


_SCALAR_TYPES = ("BTree", "Bitmap", "LabelList", "FTS")


@dataclass
class IndexReport:
    rows: int
    action: str  # "none", "built", "optimized", "dropped"
    index_type: str | None
    num_partitions: int | None
    indexed_rows: int | None  # molecules (rows) covered by the index
    unindexed_rows: int | None  # rows appended since, scanned flat until the next refresh
    size_bytes: int | None
    seconds: float
    # A concurrent writer (a caption job) kept preempting the compaction; rows are intact and the
    # index is refreshed, the small fragments are compacted by the next optimise.
    compaction_deferred: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def token_index(table: lancedb.table.Table) -> Any | None:
    """The vector index on the token column, or None."""
    for index in table.list_indices():
        if TOKEN_COLUMN in index.columns and index.index_type not in ("BTree", "Bitmap", "LabelList", "FTS"):
            return index
    return None


MAX_PARTITIONS = 1024


def default_partitions(rows: int, tokens_per_row: int = 32) -> int:
    """About 4k token vectors per partition, at most MAX_PARTITIONS. Assigning every token to its
    partition dominates the build and grows with the partition count: at 1M molecules (32M tokens)
    1024 partitions took 71 min on 2 cores and still gave recall@10 0.95-1.00 at 5-20 probes
    (docs/benchmarks.md); a 2048-partition build had not finished after 29 min."""
    return max(1, min(MAX_PARTITIONS, rows * tokens_per_row // 4096))


def build_index(
    table: lancedb.table.Table,
    index_type: str = "auto",
    brute_force_rows: int = BRUTE_FORCE_ROWS,
    num_partitions: int | None = None,
    rebuild: bool = False,
) -> IndexReport:
    """Build, refresh or drop the token index so that search uses the right path for the table size.

    ``auto``: no index below ``brute_force_rows`` rows (any existing one is dropped), IVF_SQ
    above. An existing index of the right type is refreshed with ``optimize()`` (new rows are added
    to it) unless ``rebuild``; ``none`` drops it. Scalar indexes on the filter columns are kept
    current in every case.
    """
    started = time.perf_counter()
    rows = table.count_rows()
    if index_type == "auto":
        index_type = "none" if rows < brute_force_rows else DEFAULT_INDEX_TYPE
    if index_type != "none" and index_type not in INDEX_TYPES:
        raise ValueError(f"index_type must be auto, none or one of {INDEX_TYPES}, got {index_type!r}")
    existing = token_index(table)
    _ensure_scalar_indexes(table)
    deferred = False

    if index_type == "none":
        action = "none"
        if existing is not None:
            table.drop_index(existing.name)
            action = "dropped"
        if rows:
            # compacts the job's many small commits and refreshes scalar indexes
            deferred = not _optimize(table)
        return IndexReport(
            rows, action, None, None, None, None, None, time.perf_counter() - started, deferred
        )

    if existing is not None and not rebuild and table.index_stats(existing.name).index_type == index_type:
        deferred = not _optimize(table)  # folds rows appended since the build into the index
        action = "optimized"
        partitions = None
    else:
        partitions = num_partitions or default_partitions(rows)
        import lancedb.index

        config_class = getattr(lancedb.index, _INDEX_CONFIGS[index_type])
        # Cosine is the only metric for multi-vector columns, and MaxSim on unit vectors.
        table.create_index(
            TOKEN_COLUMN, config=config_class(distance_type="cosine", num_partitions=partitions), replace=True
        )
        action = "built"
    index = token_index(table)
    stats = table.index_stats(index.name)
    return IndexReport(
        rows=rows,
        action=action,
        index_type=index_type,
        num_partitions=partitions,
        indexed_rows=stats.num_indexed_rows,
        unindexed_rows=stats.num_unindexed_rows,
        size_bytes=getattr(index, "size_bytes", None),
        seconds=time.perf_counter() - started,
        compaction_deferred=deferred,
    )


def _optimize(table: lancedb.table.Table) -> bool:
    """Compact and refresh every index; False if concurrent writers kept preempting the compaction,
    in which case only the indexes are refreshed (Lance commits an index update beside theirs)."""
    if optimize_table(table):
        return True
    table.to_lance().optimize.optimize_indices()
    return False


def _ensure_scalar_indexes(table: lancedb.table.Table) -> None:
    import lancedb.index

    present = {column for index in table.list_indices() for column in index.columns}
    names = set(table.schema.names)
    for column, kind in SCALAR_INDEXES.items():
        if column in names and column not in present and table.count_rows():
            table.create_index(
                column, config=lancedb.index.BTree() if kind == "BTREE" else lancedb.index.Bitmap()
            )
