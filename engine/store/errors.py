"""Storage errors of catalog tables, said without Lance's internals (Rust source paths, crate names).

A damaged table (a data file or manifest of its latest version cut or overwritten) makes Lance
raise IO or decode errors that name neither the table nor a way out; `damaged_table_error`
turns them into a `CatalogTableDamaged` that names the table, the damaged part and how to get the
earlier version back (docs/reliability.md, "Faults"). Errors of the operating system that are
not damage (permission denied, read-only, no space) keep Lance's own message when read; when a
write fails on them, `storage_write_error` says which table, what the OS refused and that the
rows committed before are kept.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

_DAMAGE = re.compile(r"LanceError\((?:IO|Corrupt\w*)\)|failed to decode|corrupt", re.IGNORECASE)
# OS errors that are not damage: EPERM, EACCES, EMFILE, ENOSPC, EROFS, EDQUOT.
_NOT_DAMAGE = re.compile(r"os error (?:1|13|24|28|30|122)\b")
_RUST_LOCATION = re.compile(r",?\s*(?:/|[A-Za-z]:\\)\S*\.rs:\d+(?::\d+)?")
_PREFIXES = re.compile(r"^(?:(?:External error|lance error|LanceError\(\w+\)|Invalid user input):\s*)+")
_PATH = re.compile(r"(?:[a-z][a-z0-9+.-]*://)?/[^\s,:'\"()]+")


class CatalogStorageError(RuntimeError):
    """The storage of a catalog table cannot be used as asked (not the caller's input)."""


class CatalogTableDamaged(CatalogStorageError):
    """A file of the table's latest version cannot be read; the message says how to recover."""


class CatalogTableLocked(CatalogStorageError):
    """Another job holds the table's writer lock."""


def storage_detail(error: BaseException, limit: int = 300) -> str:
    """Lance's message without Rust source locations, error-class prefixes or full paths (a path
    keeps its last component)."""
    text = " ".join(str(error).split())
    text = _PREFIXES.sub("", _RUST_LOCATION.sub("", text))
    text = _PATH.sub(lambda m: PurePosixPath(m.group(0)).name or "/", text)
    return text[:limit].rstrip(" ,")


_WRITE_REFUSALS = {
    28: "no space left on device",
    122: "the disk quota is exceeded",
    30: "the file system is read-only",
    13: "permission denied",
    1: "operation not permitted",
}
_OS_ERROR = re.compile(r"os error (\d+)\b")


def storage_write_error(uri: str, error: BaseException) -> CatalogStorageError | None:
    """A CatalogStorageError for a write to the table at `uri` that the OS refused (no space,
    quota, read-only, permissions); None for other errors."""
    errno = getattr(error, "errno", None)
    if errno not in _WRITE_REFUSALS:
        found = _OS_ERROR.search(str(error))
        errno = int(found.group(1)) if found else None
    if errno not in _WRITE_REFUSALS:
        return None
    table, db = _where(uri)
    return CatalogStorageError(
        f"cannot write table {table!r} (database {db!r}): {_WRITE_REFUSALS[errno]} (os error {errno}). "
        "Every chunk committed before is kept and this chunk is not: fix the storage and re-run the "
        "job, which resumes after the last commit (see docs/reliability.md, 'Faults')."
    )


def is_damage(error: BaseException) -> bool:
    """Whether a Lance error says a file of the table cannot be read (not a permission, read-only
    or space problem)."""
    text = str(error)
    return bool(_DAMAGE.search(text)) and not _NOT_DAMAGE.search(text)


def _manifest_version(name: str) -> int | None:
    """The version of a `_versions/<n>.manifest` file (Lance's V2 names store u64::MAX - version)."""
    stem = name.removesuffix(".manifest")
    if not stem.isdigit():
        return None
    number = int(stem)
    return (2**64 - 1) - number if number > 2**63 else number


def _latest_manifest(uri: str) -> tuple[int, str] | None:
    """(version, file name) of the newest manifest of a local table; None elsewhere."""
    directory = Path(uri.removeprefix("file://")) / "_versions"
    if "://" in uri.removeprefix("file://") or not directory.is_dir():
        return None
    found = [
        (v, p.name) for p in directory.glob("*.manifest") if (v := _manifest_version(p.name)) is not None
    ]
    return max(found) if found else None


def _where(uri: str) -> tuple[str, str]:
    """(table name, database folder name) of a table's `<db>/<table>.lance` URI."""
    path = PurePosixPath(uri.rstrip("/"))
    return path.name.removesuffix(".lance"), path.parent.name


def damaged_table_error(uri: str, error: BaseException) -> CatalogTableDamaged:
    """A CatalogTableDamaged for `error` raised reading the table at `uri`: what is damaged, the
    versions before it and how to get one of them back, without Lance internals."""
    import lance

    table, db = _where(uri)
    detail = storage_detail(error)
    guide = "see docs/reliability.md, 'Faults'"
    try:
        versions = [v["version"] for v in lance.dataset(uri).versions()]
    except Exception:  # the latest manifest itself cannot be read
        latest = _latest_manifest(uri)
        where = f"version {latest[0]}, _versions/{latest[1]}" if latest else "the latest version"
        previous = f"version {latest[0] - 1}" if latest else "the version before"
        return CatalogTableDamaged(
            f"table {table!r} (database {db!r}) is damaged: the manifest of its latest version "
            f"({where}) cannot be read ({detail}). restore() reads that manifest first, so move the "
            f"file out of {table}.lance/_versions/: the table then opens at {previous}. Then re-run "
            f"the job to redo the rows committed after it ({guide})."
        )
    latest, earlier = max(versions), sorted(v for v in versions if v < max(versions))
    if not earlier:
        hint = "it has no earlier version to restore: re-create it (re-run the embed into a new table)"
    else:
        hint = (
            f"its earlier versions are {earlier[0]}-{earlier[-1]}: restore the last good one, e.g. "
            f"`lancedb.connect(DB).open_table({table!r}).restore({earlier[-1]})`, then re-run the job "
            "to redo the rows committed after it"
        )
    return CatalogTableDamaged(
        f"table {table!r} (database {db!r}) is damaged: a data file of its latest version, {latest}, "
        f"cannot be read ({detail}); {hint} ({guide})."
    )
