"""Reading the molecule–description pair files (`cid<TAB>smiles<TAB>description`, header, no quoting).

Malformed lines are kept as rows with a non-null `error` (and null smiles/description) so that
callers record them; nothing is dropped silently.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

PAIR_COLUMNS = ("cid", "smiles", "description")
PAIR_TABLE_SCHEMA = pa.schema(
    [
        pa.field("cid", pa.string()),
        pa.field("smiles", pa.string()),
        pa.field("description", pa.string()),
        pa.field("source", pa.string(), nullable=False),  # file stem, e.g. "chebi20_validation"
        pa.field("line", pa.int32(), nullable=False),  # 1-based line number in the file (header = 1)
        pa.field("error", pa.string()),  # null for a good row
    ]
)


def _parse_line(text: str) -> tuple[str | None, str | None, str | None, str | None]:
    """(cid, smiles, description, error) of one data line."""
    fields = text.split("\t")
    if len(fields) != len(PAIR_COLUMNS):
        return None, None, None, f"expected {len(PAIR_COLUMNS)} tab-separated fields, got {len(fields)}"
    cid, smiles, description = (f.strip() for f in fields)
    if not smiles:
        return cid, None, None, "empty SMILES"
    if not description:
        return cid, smiles, None, "empty description"
    return cid, smiles, description, None


def read_pairs(path: str | Path, source: str | None = None) -> pa.Table:
    """One row per data line with PAIR_TABLE_SCHEMA; `source` defaults to the file stem.

    Blank lines are skipped (not data); a wrong header raises ValueError (wrong file type, not a
    bad row).
    """
    path = Path(path)
    source = source or path.stem
    rows: dict[str, list] = {name: [] for name in PAIR_TABLE_SCHEMA.names}
    with path.open(encoding="utf-8", newline="") as handle:
        header = handle.readline().rstrip("\r\n").split("\t")
        if tuple(h.strip().lower() for h in header) != PAIR_COLUMNS:
            raise ValueError(f"{path}: header must be {'<TAB>'.join(PAIR_COLUMNS)}, got {header}")
        for number, raw in enumerate(handle, start=2):
            text = raw.rstrip("\r\n")
            if not text.strip():
                continue
            cid, smiles, description, error = _parse_line(text)
            for name, value in zip(
                PAIR_TABLE_SCHEMA.names,
                (cid, smiles, description, source, number, error),
                strict=True,
            ):
                rows[name].append(value)
    return pa.table(rows, schema=PAIR_TABLE_SCHEMA)


def read_pair_files(paths: list[str | Path]) -> pa.Table:
    tables = [read_pairs(p) for p in paths]
    sources = [t.column("source")[0].as_py() for t in tables if t.num_rows]
    if len(set(sources)) != len(sources):
        raise ValueError(f"two pair files share a stem (source name): {sources}")
    return pa.concat_tables(tables) if tables else PAIR_TABLE_SCHEMA.empty_table()
