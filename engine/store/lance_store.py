"""Keyed, resumable writes of embedded catalogs into a LanceDB directory.

Why merge-insert on `id`, committed per chunk: Lance commits a write atomically, so a job that
wrote once at the end would keep nothing when killed. Each chunk is one commit; a re-run reads only
the `id`/`model_version` columns back (Lance column projection), skips ids already done for its
model version and merge-inserts the rest, so rows are never duplicated. A row of an older model
version counts as not done: it is re-embedded and updated in place.

Invariant kept here: an id lives in exactly one of the two tables. Writing an id to one table
deletes it from the other (rows left there by an older model version, or by a kill between the two
commits, which `reconcile` repairs on the next start).

One writer per table: `CatalogStore.open` takes the table's writer lock (`lock.WriterLock`, local
databases only) and holds it until `close`, so a second embed job into the table is refused
instead of inserting every new id a second time. Reading a damaged table raises
`CatalogTableDamaged`, which says how to restore an earlier version.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import CatalogTableDamaged, damaged_table_error, is_damage, storage_write_error
from .lock import WriterLock
from .schema import ERRORS_SCHEMA

if TYPE_CHECKING:
    import lancedb


def sql_quote(value: object) -> str:
    """A SQL string literal for a Lance filter (quotes inside doubled)."""
    return "'" + str(value).replace("'", "''") + "'"


def sql_in_list(ids: pa.Array | list[str]) -> str:
    """`id IN (...)` filter with SQL string quoting (ids may contain quotes)."""
    values = ids.to_pylist() if isinstance(ids, pa.Array | pa.ChunkedArray) else ids
    return f"id IN ({','.join(sql_quote(v) for v in values)})"


class CatalogTableNotFound(ValueError):
    """The LanceDB directory has no table of that name."""


def table_uri(db: str | Path, table: str) -> str:
    """Where LanceDB keeps `table` of the database `db`."""
    return f"{str(db).rstrip('/')}/{table}.lance"


@contextmanager
def reading(uri: str) -> Iterator[None]:
    """Turns Lance's errors for a damaged table at `uri` into CatalogTableDamaged (others pass)."""
    try:
        yield
    except CatalogTableDamaged:
        raise
    except (OSError, ValueError, RuntimeError) as error:
        if is_damage(error):
            raise damaged_table_error(uri, error) from error
        raise


@contextmanager
def writing(uri: str) -> Iterator[None]:
    """Turns a write the OS refused (no space, read-only, permissions) into a CatalogStorageError
    that names the table, without Lance's internals (others pass)."""
    try:
        yield
    except (OSError, ValueError, RuntimeError) as error:
        if (clean := storage_write_error(uri, error)) is not None:
            raise clean from error
        raise


def open_catalog_table(
    db: str | Path, table: str, refresh_seconds: float | None = None
) -> lancedb.table.Table:
    """An existing catalog table (written by `mvclam embed`) for search, captioning or indexing.

    `refresh_seconds`: a long-lived reader sees other writers' commits after at most this long
    (LanceDB's read consistency interval); None: the version found when opened (LanceDB's default).
    Raises CatalogTableNotFound (a ValueError) naming the tables there when `table` is missing."""
    import lancedb  # imported late: Ray forks workers, and lancedb's runtime is not fork-safe

    options = (
        {} if refresh_seconds is None else {"read_consistency_interval": timedelta(seconds=refresh_seconds)}
    )
    connection = lancedb.connect(str(db), **options)
    try:
        with reading(table_uri(db, table)):
            return connection.open_table(table)
    except (ValueError, FileNotFoundError):  # "Table ... was not found" / "... does not exist"
        names = sorted(connection.list_tables().tables)
        if table in names:
            raise  # it exists but cannot be opened (damaged, storage error): keep the real cause
        raise CatalogTableNotFound(f"no table {table!r} in {db} (tables: {names})") from None


def _is_preempted(error: BaseException) -> bool:
    """Whether Lance refused a commit because another writer committed first and says to retry."""
    return isinstance(error, (RuntimeError, OSError, ValueError)) and "Retryable commit conflict" in str(
        error
    )


def optimize_table(table: lancedb.table.Table, attempts: int = 8, first_wait_s: float = 0.2) -> bool:
    """`table.optimize()` (compaction, old-version cleanup, index refresh), retried when another
    writer's commit preempts it (up to `attempts` times, under 40 s of waiting with the defaults).

    Why: Lance lets a concurrent update win over a compaction of the same fragments; the compaction
    then fails with a retryable conflict. A caption job that commits while `mvclam index` or the end
    of an embed job optimises the table is the normal nightly case, not an error. Returns False if
    every attempt was preempted: the table is intact and current, only its compaction is deferred
    to the next optimise."""
    for attempt in range(attempts):
        try:
            table.optimize()
            return True
        except (RuntimeError, OSError, ValueError) as error:
            if not _is_preempted(error):
                raise
        if attempt + 1 < attempts:
            table.checkout_latest()  # retry against the other writer's commit
            time.sleep(
                first_wait_s * 2**attempt * random.uniform(0.5, 1.5)
            )  # jitter: writers commit in bursts
    return False


def done_mask(ids: pa.Array | pa.ChunkedArray, done: pa.Array | None) -> np.ndarray:
    """The embed job's resume filter: which of `ids` are already done (`DoneIds.done`), as booleans."""
    if done is None or not len(done):
        return np.zeros(len(ids), dtype=bool)
    return pc.is_in(ids, value_set=done).to_numpy(zero_copy_only=False)


@dataclass
class DoneIds:
    """Ids already done for one model version, and ids held by rows of other versions."""

    done: pa.Array  # embedded or failed with this model version: skipped by the job
    embedded_other: pa.Array  # in the embeddings table under another model version
    failed_other: pa.Array  # in the errors table under another model version

    def __len__(self) -> int:
        return len(self.done)


def _ids_by_version(table: lancedb.table.Table, model_version: str) -> tuple[pa.Array, pa.Array]:
    data = table.to_lance().to_table(columns=["id", "model_version"])
    same = pc.equal(data["model_version"], model_version)
    ids = data["id"].combine_chunks() if data.num_rows else pa.array([], pa.string())
    if not data.num_rows:
        return ids, ids
    return ids.filter(same.combine_chunks()), ids.filter(pc.invert(same).combine_chunks())


class CatalogStore:
    """The embeddings table and its errors table (`<name>_errors`) in one LanceDB directory."""

    def __init__(self, embeddings: lancedb.table.Table, errors: lancedb.table.Table):
        self.embeddings = embeddings
        self.errors = errors
        self._embedded_other = pa.array([], pa.string())
        self._failed_other = pa.array([], pa.string())
        self._connection: lancedb.DBConnection | None = None
        self._created: list[str] = []  # tables `open` created (dropped again by `discard_if_unused`)
        self._lock: WriterLock | None = None

    @classmethod
    def open(
        cls, db: str | Path, table: str, schema: pa.Schema, errors_table: str | None = None
    ) -> CatalogStore:
        """Open (creating if missing) both tables, holding the table's writer lock until `close`.
        Fails if another store or job holds the lock (CatalogTableLocked), if an existing table
        has another schema (ValueError) or is damaged (CatalogTableDamaged)."""
        import lancedb  # imported late: Ray forks workers, and lancedb's runtime is not fork-safe

        lock = WriterLock.acquire(db, table)  # before anything is created: a refused job leaves nothing
        try:
            store = cls._open_tables(lancedb.connect(str(db)), db, table, schema, errors_table)
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        store._lock = lock
        return store

    @classmethod
    def _open_tables(
        cls,
        connection: lancedb.DBConnection,
        db: str | Path,
        table: str,
        schema: pa.Schema,
        errors_table: str | None,
    ) -> CatalogStore:
        opened, created = [], []
        for name, expected in ((table, schema), (errors_table or f"{table}_errors", ERRORS_SCHEMA)):
            try:
                with reading(table_uri(db, name)):
                    handle = connection.open_table(name)
            except ValueError:  # "Table ... was not found"
                opened.append(connection.create_table(name, schema=expected))
                created.append(name)
                continue
            got = handle.schema
            mismatched = [
                f.name
                for f in expected
                if got.get_field_index(f.name) < 0 or got.field(f.name).type != f.type
            ]
            if mismatched:
                raise ValueError(
                    f"table {name!r} in {db} has another schema (columns {mismatched} differ: "
                    "another embedding size or token dtype?); write to a new --table"
                )
            opened.append(handle)
        embeddings, errors = opened
        store = cls(embeddings, errors)
        store._connection, store._created = connection, created
        return store

    def close(self) -> None:
        """Release the writer lock (the tables stay usable for reading)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> CatalogStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def discard_if_unused(self) -> None:
        """Drop the tables `open` created, if nothing was written to either: a run that fails
        before its first commit then leaves the database as it found it."""
        if self._connection is None or not self._created or any(self.counts()):
            return
        for name in self._created:
            self._connection.drop_table(name)
        self._created = []

    def _read_ids(self, model_version: str) -> tuple[pa.Array, pa.Array, DoneIds]:
        """(embedded, failed) ids of this model version, and the DoneIds view of both tables."""
        with reading(self.embeddings.uri):
            embedded, embedded_other = _ids_by_version(self.embeddings, model_version)
        with reading(self.errors.uri):
            failed, failed_other = _ids_by_version(self.errors, model_version)
        self._embedded_other, self._failed_other = embedded_other, failed_other
        done = pa.concat_arrays([embedded, failed]).unique()
        return embedded, failed, DoneIds(done, embedded_other, failed_other)

    def done_ids(self, model_version: str) -> DoneIds:
        return self._read_ids(model_version)[2]

    def reconcile(self, model_version: str) -> DoneIds:
        """Repair ids found in both tables (a kill between the two commits of one chunk): the row
        of the current model version wins. Returns the done ids after the repair."""
        embedded, failed, state = self._read_ids(model_version)
        stale_errors = embedded.filter(pc.is_in(embedded, value_set=state.failed_other))
        stale_embedded = failed.filter(pc.is_in(failed, value_set=state.embedded_other))
        if len(stale_errors):
            self.errors.delete(sql_in_list(stale_errors))
        if len(stale_embedded):
            self.embeddings.delete(sql_in_list(stale_embedded))
        if len(stale_errors) or len(stale_embedded):
            state = self.done_ids(model_version)
        return state

    def write(self, embedded: pa.Table | None, failed: pa.Table | None) -> None:
        """Merge-insert one chunk (ids must be unique within it): one commit per non-empty table."""
        for rows, target, other, other_ids in (
            (embedded, self.embeddings, self.errors, self._failed_other),
            (failed, self.errors, self.embeddings, self._embedded_other),
        ):
            if rows is None or rows.num_rows == 0:
                continue
            with writing(target.uri):
                (
                    target.merge_insert("id")
                    .when_matched_update_all()
                    .when_not_matched_insert_all()
                    .execute(_with_missing_columns(rows, target.schema).cast(target.schema))
                )
            if len(other_ids):
                moved = rows["id"].combine_chunks()
                moved = moved.filter(pc.is_in(moved, value_set=other_ids))
                if len(moved):
                    with writing(other.uri):
                        other.delete(sql_in_list(moved))

    def counts(self) -> tuple[int, int]:
        with reading(self.embeddings.uri):
            embedded = self.embeddings.count_rows()
        with reading(self.errors.uri):
            return embedded, self.errors.count_rows()

    def optimize(self) -> bool:
        """Compact the many small per-chunk fragments and drop old versions. False: a concurrent
        writer (a caption job) kept preempting the compaction, which is deferred; no row is lost."""
        return all([optimize_table(table) for table in (self.embeddings, self.errors)])


def _with_missing_columns(rows: pa.Table, schema: pa.Schema) -> pa.Table:
    """`rows` with null columns for the fields of `schema` it lacks (e.g. the caption columns that
    `mvclam caption` added to the table): a later embed must still write into that table."""
    for field in schema:
        if field.name not in rows.column_names:
            rows = rows.append_column(field.name, pa.nulls(rows.num_rows, field.type))
    return rows.select(schema.names)
