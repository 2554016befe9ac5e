"""Reading compound catalogs into Arrow batches of (id, input, source, source_row, read_error).

Formats by extension (a trailing `.gz` is decompressed by Arrow): `.smi`/`.smiles`/`.txt` (SMILES,
then an optional id, whitespace-separated, no header), `.csv`, `.tsv`/`.tab` (header row), `.parquet`/
`.pq`, `.sdf`/`.sd`. Local globs are expanded on the driver; URIs (s3://, gs://, …) are passed to
Ray Data's filesystem layer as given.

Ids: taken from the id column (`id_column`, else the first of ID_CANDIDATES present), the second
field of a `.smi` line, or the SDF title line / `id_column` SD property. Rows without one get the
stable id `<file name>:<row>` (1-based line number for `.smi`, data row for CSV/TSV/Parquet, record
number for SDF), so re-reading the same file yields the same ids. Two catalogs with the same file
name in different folders would share derived ids: give such files an id column.

One read task streams one whole file in blocks of `rows_per_block` rows; the job's views stage runs
as a separate operator (its remote args differ), so the blocks of one large file fan out to every
views worker.
"""

from __future__ import annotations

import csv
import glob
import io
import os
from collections.abc import Iterator
from pathlib import PurePosixPath

import pyarrow as pa
import pyarrow.parquet as pq
from ray.data.datasource import FileBasedDatasource
from rdkit import Chem, rdBase

READ_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("input", pa.string()),
        pa.field("source", pa.string(), nullable=False),
        pa.field("source_row", pa.int64(), nullable=False),
        pa.field("read_error", pa.string()),  # set when the record itself is unreadable (bad SDF block)
    ]
)
SMILES_CANDIDATES = ("smiles", "canonical_smiles", "smi", "isomeric_smiles")
ID_CANDIDATES = ("id", "chembl_id", "compound_id", "molecule_id", "mol_id", "name", "zinc_id", "title")
FORMATS = {
    ".smi": "smi",
    ".smiles": "smi",
    ".txt": "smi",
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".sdf": "sdf",
    ".sd": "sdf",
}


def catalog_format(path: str) -> str:
    name = PurePosixPath(path).name.lower()
    name = name.removesuffix(".gz")
    suffix = PurePosixPath(name).suffix
    if suffix not in FORMATS:
        raise ValueError(
            f"unsupported catalog file {path!r}: expected one of {sorted(FORMATS)} (optionally .gz)"
        )
    return FORMATS[suffix]


def resolve_inputs(inputs: str | list[str]) -> list[str]:
    """Expand local globs and directories into a sorted, de-duplicated file list (URIs pass through)."""
    items = [inputs] if isinstance(inputs, str) else list(inputs)
    paths: list[str] = []
    for item in items:
        if "://" in item:
            paths.append(item)
            continue
        matches = sorted(glob.glob(item, recursive=True)) if glob.has_magic(item) else [item]
        if not matches:
            raise FileNotFoundError(f"no catalog files match {item!r}")
        for match in matches:
            if os.path.isdir(match):
                inner = sorted(
                    os.path.join(root, name)
                    for root, _, names in os.walk(match)
                    for name in names
                    if not name.startswith((".", "_"))
                )
                paths.extend(p for p in inner if _supported(p))
            elif not os.path.exists(match):
                raise FileNotFoundError(f"catalog file not found: {match}")
            else:
                catalog_format(match)  # fail early on an unsupported extension
                paths.append(os.path.abspath(match))
    unique = list(dict.fromkeys(paths))
    if not unique:
        raise FileNotFoundError(f"no catalog files found in {items}")
    return unique


def _supported(path: str) -> bool:
    try:
        catalog_format(path)
    except ValueError:
        return False
    return True


def _pick(
    columns: list[str], wanted: str | None, candidates: tuple[str, ...], what: str, path: str
) -> str | None:
    if wanted is not None:
        if wanted not in columns:
            raise ValueError(f"{path}: no {what} column {wanted!r} (columns: {columns})")
        return wanted
    lowered = {c.lower(): c for c in columns}
    for candidate in candidates:
        if candidate in lowered:
            return lowered[candidate]
    if what == "SMILES":
        raise ValueError(f"{path}: no SMILES column found (looked for {candidates}); set smiles_column")
    return None


class _BlockBuilder:
    """Accumulates rows and emits READ_SCHEMA tables of at most `rows_per_block` rows."""

    def __init__(self, source: str, rows_per_block: int):
        self.source = source
        self.rows_per_block = rows_per_block
        self._rows: list[tuple[str, str | None, int, str | None]] = []

    def add(self, row: int, smiles: str | None, id_value: str | None, read_error: str | None = None) -> None:
        id_value = id_value.strip() if isinstance(id_value, str) else id_value
        self._rows.append((id_value or f"{self.source}:{row}", smiles, row, read_error))

    @property
    def full(self) -> bool:
        return len(self._rows) >= self.rows_per_block

    def emit(self) -> pa.Table:
        ids, inputs, rows, errors = zip(*self._rows, strict=True) if self._rows else ((), (), (), ())
        self._rows = []
        return pa.Table.from_arrays(
            [
                pa.array(ids, pa.string()),
                pa.array(inputs, pa.string()),
                pa.array([self.source] * len(ids), pa.string()),
                pa.array(rows, pa.int64()),
                pa.array(errors, pa.string()),
            ],
            schema=READ_SCHEMA,
        )


class CatalogDatasource(FileBasedDatasource):
    """Ray Data source for every catalog format; one read task streams one file in small blocks."""

    def __init__(
        self,
        paths: list[str],
        smiles_column: str | None = None,
        id_column: str | None = None,
        rows_per_block: int = 128,
        **kwargs,
    ):
        super().__init__(paths, **kwargs)
        self.smiles_column = smiles_column
        self.id_column = id_column
        self.rows_per_block = rows_per_block

    def _open_input_source(self, filesystem, path: str, **open_args) -> pa.NativeFile:
        if catalog_format(path) == "parquet":  # Parquet needs random access
            return filesystem.open_input_file(path)
        return super()._open_input_source(filesystem, path, **open_args)

    def _read_stream(self, f: pa.NativeFile, path: str) -> Iterator[pa.Table]:
        yield from read_catalog_file(f, path, self.smiles_column, self.id_column, self.rows_per_block)


def read_catalog_file(
    f: pa.NativeFile | io.IOBase,
    path: str,
    smiles_column: str | None = None,
    id_column: str | None = None,
    rows_per_block: int = 128,
) -> Iterator[pa.Table]:
    """READ_SCHEMA blocks of one (already decompressed) catalog file, in file order."""
    fmt = catalog_format(path)
    builder = _BlockBuilder(PurePosixPath(path).name, rows_per_block)
    reader = {"smi": _smi_rows, "csv": _delimited_rows, "tsv": _delimited_rows, "parquet": _parquet_rows}.get(
        fmt, _sdf_rows
    )
    for row, smiles, id_value, error in reader(f, path, fmt, smiles_column, id_column):
        builder.add(row, smiles, id_value, error)
        if builder.full:
            yield builder.emit()
    if builder._rows:
        yield builder.emit()


Row = tuple[int, str | None, str | None, str | None]


def _text(f) -> io.TextIOWrapper:
    return io.TextIOWrapper(f, encoding="utf-8", errors="replace", newline="")


def _smi_rows(f, path, fmt, smiles_column, id_column) -> Iterator[Row]:
    for number, line in enumerate(_text(f), start=1):
        fields = line.split(None, 1)
        smiles = fields[0] if fields else ""
        id_value = fields[1].strip() if len(fields) > 1 else None
        yield number, smiles, id_value, None


def _delimited_rows(f, path, fmt, smiles_column, id_column) -> Iterator[Row]:
    reader = csv.reader(_text(f), delimiter="\t" if fmt == "tsv" else ",")
    header = next(reader, None)
    if header is None:
        return
    header = [h.strip() for h in header]
    smiles_index = header.index(_pick(header, smiles_column, SMILES_CANDIDATES, "SMILES", path))
    id_name = _pick(header, id_column, ID_CANDIDATES, "id", path)
    id_index = header.index(id_name) if id_name is not None else None
    for number, fields in enumerate(reader, start=1):
        smiles = fields[smiles_index] if smiles_index < len(fields) else ""
        id_value = fields[id_index] if id_index is not None and id_index < len(fields) else None
        yield number, smiles, id_value, None


def _parquet_rows(f, path, fmt, smiles_column, id_column) -> Iterator[Row]:
    parquet = pq.ParquetFile(f)
    names = parquet.schema_arrow.names
    smiles_name = _pick(names, smiles_column, SMILES_CANDIDATES, "SMILES", path)
    id_name = _pick(names, id_column, ID_CANDIDATES, "id", path)
    columns = [smiles_name] if id_name is None else [smiles_name, id_name]
    number = 0
    for batch in parquet.iter_batches(batch_size=4096, columns=columns):
        smiles = batch.column(smiles_name).cast(pa.string()).to_pylist()
        ids = batch.column(id_name).cast(pa.string()).to_pylist() if id_name else [None] * len(smiles)
        for s, i in zip(smiles, ids, strict=True):
            number += 1
            yield number, s, i, None


def _sdf_records(f) -> Iterator[str]:
    lines: list[str] = []
    for line in _text(f):
        if line.startswith("$$$$"):
            yield "".join(lines)
            lines = []
        else:
            lines.append(line)
    if any(line.strip() for line in lines):  # last record without a terminator
        yield "".join(lines)


def _sd_properties(block: str) -> dict[str, str]:
    properties: dict[str, str] = {}
    _, _, tail = block.partition("M  END")
    name = None
    for line in tail.splitlines():
        if line.startswith(">") and "<" in line and ">" in line[line.index("<") :]:
            name = line[line.index("<") + 1 : line.index(">", line.index("<"))]
            properties[name] = ""
        elif name is not None and line.strip():
            properties[name] = (properties[name] + "\n" + line).strip()
        else:
            name = None
    return properties


def _sdf_rows(f, path, fmt, smiles_column, id_column) -> Iterator[Row]:
    """SDF records -> isomeric SMILES (stereo from the block); an unsanitisable record is passed on
    unsanitised so the views stage classifies it, an unparsable one becomes a read error."""
    for number, block in enumerate(_sdf_records(f), start=1):
        title = block.split("\n", 1)[0].strip()
        id_value = _sd_properties(block).get(id_column) if id_column else title
        with rdBase.BlockLogs():
            mol = Chem.MolFromMolBlock(block, sanitize=True, removeHs=True)
            if mol is None:
                mol = Chem.MolFromMolBlock(block, sanitize=False, removeHs=False)
            smiles = Chem.MolToSmiles(mol) if mol is not None else None
        if smiles is None:
            yield number, block, id_value, "unparsable SDF record (molblock could not be read)"
        else:
            yield number, smiles, id_value, None
