"""The writer lock of a catalog table in a local LanceDB directory.

Why: two embed jobs on one table each read the done ids when they start, then merge-insert the
same new ids; neither merge sees the other's uncommitted rows, so Lance commits both inserts and
every such id is stored twice. The lock makes the second job fail at once with a clear error.

How: an exclusive, non-blocking `flock` on `<db>/<table>.lock`, held by the writing
`CatalogStore` until it is closed (or its process exits: the OS then drops the lock, so a killed
job never leaves a stale lock behind). The file stays; it records the holder for the error message.
Readers (search, serve, captioning's reads) never take it. Object-store databases (s3://, gs://,
...) get no lock: `flock` does not reach them, and Lance's commit handling is all there is.
"""

from __future__ import annotations

import fcntl
import os
import socket
import weakref
from datetime import UTC, datetime
from pathlib import Path

from .errors import CatalogStorageError, CatalogTableLocked


def is_local(db: str | Path) -> bool:
    """Whether `db` is a directory of this machine (a path or file:// URI), not an object store."""
    text = str(db)
    return "://" not in text or text.startswith("file://")


def lock_path(db: str | Path, table: str) -> Path:
    return Path(str(db).removeprefix("file://")) / f"{table}.lock"


class WriterLock:
    """A held writer lock; `release` (or garbage collection, or the process ending) frees it."""

    def __init__(self, path: Path, fd: int):
        self.path = path
        self._release = weakref.finalize(self, os.close, fd)  # closing the fd drops the flock

    @classmethod
    def acquire(cls, db: str | Path, table: str, job: str = "embed job") -> WriterLock | None:
        """The lock of `table` in `db` (None for an object store); CatalogTableLocked if another
        process or store holds it."""
        if not is_local(db):
            return None
        path = lock_path(db, table)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:  # a read-only database, or no permission: say so before any work
            raise CatalogStorageError(
                f"cannot write table {table!r} in {db}: cannot create its writer lock {path.name} "
                f"({error.strerror})"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 300, 0).decode("utf-8", "replace").strip()
            os.close(fd)
            raise CatalogTableLocked(
                f"table {table!r} in {db} is being written by another job ({holder or 'holder unknown'}; "
                f"lock file {path}): wait for it to finish, or write to another --table"
            ) from None
        since = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        holder = f"{job}, pid {os.getpid()} on {socket.gethostname()}, since {since}\n"
        try:  # who holds it, for the error of the next job; a full disk must not stop this one
            os.ftruncate(fd, 0)
            os.pwrite(fd, holder.encode(), 0)
        except OSError:
            pass
        return cls(path, fd)

    @property
    def held(self) -> bool:
        return self._release.alive

    def release(self) -> None:
        self._release()
