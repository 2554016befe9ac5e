"""Reading compound catalogs into Arrow batches of (id, input, source, source_row, read_error).

Formats by extension (a trailing `.gz` is decompressed by Arrow): `.smi`/`.smiles`/`.txt` (SMILES,
then an optional id, whitespace-separated, no header), `.csv`, `.tsv`/`.tab` (header row), `.parquet`/
`.pq`, `.sdf`/`.sd`. Local globs are expanded on the driver; URIs (s3://, gs://, …) are passed to
Ray Data's filesystem layer as given.

Lines end at `\n` or `\r\n` only: a lone `\r` is data (whitespace in a `.smi` line). A `.smi`
line is `SMILES [|CXSMILES extensions|] [id]`; the extension block stays with the SMILES.

Damaged content neither aborts the job nor loses rows silently: a CSV/TSV row with a field over the csv
module's limit or another parse error, and the line where an unclosed quote starts (the lines after
it are read again as rows of their own), become rows with a `read_error`; a file that cannot be
read to its end (truncated or corrupt `.gz`) keeps the rows read before the damage and gets one
error row `<file name>:<row>:unreadable` for the rest. A Parquet file that is not Parquet, is
truncated or has a damaged row group is treated alike. A Parquet SMILES or id column of a type that
is not text (a list, a struct) refuses the file with an error naming it and the column; binary
values are decoded as UTF-8 with invalid bytes replaced (the views stage rejects such a SMILES).

Text is UTF-8; a leading byte-order mark (Excel's "CSV UTF-8") is dropped, so it cannot hide the
first header name.

Ids: taken from the id column (`id_column`, else the first of ID_CANDIDATES present), the second
field of a `.smi` line, or the SDF title line / `id_column` SD property. Rows without one get the
stable id `<file name>:<row>` (1-based line number for `.smi`, data row for CSV/TSV/Parquet, record
number for SDF), so re-reading the same file yields the same ids. Two catalogs with the same file
name in different folders would share derived ids: give such files an id column.

`read_catalog_file` streams one whole (already decompressed) file in blocks of `rows_per_block`
rows; the embedding job's Ray Data source runs it as one read task per file. No Ray here.
"""

from __future__ import annotations

import csv
import glob
import io
import os
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import pyarrow as pa
import pyarrow.parquet as pq
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
    # Parquet needs random access and reports its own errors; text formats are read through a guard
    # so that a read error mid-file (truncated .gz) ends the file instead of the whole job.
    stream = f if fmt == "parquet" else _GuardedStream(f)
    last_row = 0
    for row, smiles, id_value, error in reader(stream, path, fmt, smiles_column, id_column):
        last_row = row
        builder.add(row, smiles, id_value, error)
        if builder.full:
            yield builder.emit()
    if isinstance(stream, _GuardedStream) and stream.error is not None:
        builder.add(*_unreadable_row(builder.source, last_row + 1, stream.error))
    if builder._rows:
        yield builder.emit()


Row = tuple[int, str | None, str | None, str | None]


def _unreadable_row(source: str, row: int, error: str) -> Row:
    """The error row standing for a file's unreadable rest from `row` on. Its own id: a later,
    repaired copy of the file must not find row `row` already done."""
    reason = f"file unreadable from row {row} on (truncated or corrupt?): {error}"[:500]
    return row, None, f"{source}:{row}:unreadable", reason


READ_CHUNK = 8192  # bytes per read: a failing read of a compressed stream loses what it decoded


class _GuardedStream(io.RawIOBase):
    """`f` as a raw stream whose first read error becomes end of file, kept in `error`: the rows
    before the damage are still read, and the reader records the damage as a row."""

    def __init__(self, f: pa.NativeFile | io.IOBase):
        super().__init__()
        self._f = f
        self.error: str | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.error is not None:
            return 0
        try:
            data = self._f.read(min(len(buffer), READ_CHUNK))
        except Exception as exc:  # zlib, gzip and Arrow errors share no base class
            self.error = f"{type(exc).__name__}: {exc}"
            return 0
        buffer[: len(data)] = data
        return len(data)


def _text(f) -> io.TextIOWrapper:
    # newline="\n": split on \n (and so \r\n) only; a lone \r stays inside its line as data.
    raw = io.BufferedReader(f, READ_CHUNK) if isinstance(f, _GuardedStream) else f
    # utf-8-sig: a byte-order mark at the start is dropped (elsewhere U+FEFF stays data).
    return io.TextIOWrapper(raw, encoding="utf-8-sig", errors="replace", newline="\n")


def _lines(f) -> Iterator[tuple[int, str]]:
    """(1-based line number, line with its terminator). After a read error the last, cut-off line
    is dropped: a truncated SMILES may still parse, as another molecule."""
    for number, line in enumerate(_text(f), start=1):
        if not line.endswith("\n") and getattr(f, "error", None) is not None:
            return
        yield number, line


def split_smi_line(line: str) -> tuple[str, str | None]:
    """(SMILES, id or None) of a `.smi` line `SMILES [|CX extensions|] [id ...]`: a CXSMILES block
    (stereo groups, labels; RDKit parses it) belongs to the SMILES, not to the id."""
    fields = line.split(None, 1)
    if not fields:
        return "", None
    smiles, rest = fields[0], fields[1].strip() if len(fields) > 1 else ""
    if rest.startswith("|") and (end := rest.find("|", 1)) > 0:
        smiles, rest = f"{smiles} {rest[: end + 1]}", rest[end + 1 :].strip()
    return smiles, rest or None


def _smi_rows(f, path, fmt, smiles_column, id_column) -> Iterator[Row]:
    for number, line in _lines(f):
        smiles, id_value = split_smi_line(line)
        yield number, smiles, id_value, None


# A quoted field running over more lines than this is taken for an unclosed quote: SMILES and ids
# never span lines, and without a bound one stray quote swallows the rest of the file.
MAX_RECORD_LINES = 100
# Stand-ins for a lone \r while csv parses a line (csv would end the row there): the first one
# the line does not contain. Private-use characters first: hostile catalogs hold NULs, and a stand-in
# found in another line of the same multi-line record would turn into a \r there. A line holding
# all of them keeps its \r and is split there (each part is still a row, so nothing is lost).
_CR_STANDINS = ("\ue000", "\ue001", "\ue002", "\x00")


class _UnclosedQuote(Exception):
    pass


@dataclass
class _Record:
    """The physical lines csv consumed for the record being parsed."""

    lines: list[tuple[int, str]] = field(default_factory=list)
    at_eof: bool = False  # csv asked for another line of this record and the file had none
    cr_standins: set[str] = field(default_factory=set)  # stand-ins used for lone \r in its lines


def _csv_line(line: str, record: _Record) -> str:
    body = line[:-2] if line.endswith("\r\n") else line[:-1] if line.endswith("\n") else line
    if "\r" in body:
        standin = next((c for c in _CR_STANDINS if c not in body), None)
        if standin is not None:
            body = body.replace("\r", standin)
            record.cr_standins.add(standin)
    return body + "\n"


def _runaway(record: _Record, fields: list[str], columns: int | None, key_fields: tuple[int, ...]) -> bool:
    """Whether a parsed record is the work of an unclosed quote rather than a multi-line field."""
    if record.at_eof:
        return True
    if len(record.lines) == 1:
        return False
    wrong_width = columns is not None and len(fields) != columns
    return wrong_width or any(i < len(fields) and "\n" in fields[i] for i in key_fields)


def _csv_records(
    lines: Iterator[tuple[int, str]],
    delimiter: str,
    columns: int | None = None,
    key_fields: tuple[int, ...] = (),
) -> Iterator[tuple[int, list[str] | None, str | None]]:
    """(first line number, fields or None, read error) per CSV record, each physical line in one.

    A quote that does not close (by the end of the file or within MAX_RECORD_LINES lines), or that
    makes a multi-line record of another width than `columns` or with a newline in a `key_fields`
    field (SMILES, id), makes the record's first line an error; the lines after it are parsed
    again, so no row vanishes into the unclosed field."""
    pending: deque[tuple[int, str]] = deque()
    record = _Record()

    def feed() -> Iterator[str]:
        while True:
            item = pending.popleft() if pending else next(lines, None)
            if item is None:
                record.at_eof = bool(record.lines)
                return
            record.lines.append(item)
            if len(record.lines) > MAX_RECORD_LINES:
                raise _UnclosedQuote
            yield _csv_line(item[1], record)

    reader = csv.reader(feed(), delimiter=delimiter)
    while True:
        record.lines, record.at_eof, record.cr_standins = [], False, set()
        error = None
        try:
            fields = next(reader)
        except StopIteration:
            return
        except _UnclosedQuote:
            fields, error = None, "unclosed"
        except csv.Error as exc:  # e.g. a field over csv.field_size_limit()
            line = record.lines[-1][0] if record.lines else 0
            fields, error = None, f"unreadable CSV row (line {line}): {exc}"
        if fields is not None and _runaway(record, fields, columns, key_fields):
            error = "unclosed"
        first = record.lines[0][0] if record.lines else 0
        if error is not None:
            if error == "unclosed":
                error = (
                    f"unclosed quote: the quoted field opened on line {first} does not close where "
                    "a field can end; the lines after it are read as rows of their own"
                )
                pending.extendleft(reversed(record.lines[1:]))
            reader = csv.reader(feed(), delimiter=delimiter)  # a fresh parser state and line feed
            yield first, None, error
            continue
        for standin in record.cr_standins:
            fields = [value.replace(standin, "\r") for value in fields]
        yield first, fields, None


def _delimited_rows(f, path, fmt, smiles_column, id_column) -> Iterator[Row]:
    delimiter = "\t" if fmt == "tsv" else ","
    lines = _lines(f)
    first = next(_csv_records(lines, delimiter), None)
    if first is None:
        return
    if first[1] is None:
        raise ValueError(f"{path}: unreadable header row: {first[2]}")
    header = [h.strip() for h in first[1]]
    smiles_index = header.index(_pick(header, smiles_column, SMILES_CANDIDATES, "SMILES", path))
    id_name = _pick(header, id_column, ID_CANDIDATES, "id", path)
    id_index = header.index(id_name) if id_name is not None else None
    keys = (smiles_index,) if id_index is None else (smiles_index, id_index)
    # A good header leaves no line behind in its parser, so the data records continue from `lines`.
    for number, (_, fields, error) in enumerate(_csv_records(lines, delimiter, len(header), keys), start=1):
        if fields is None:
            yield number, None, None, error
            continue
        smiles = fields[smiles_index] if smiles_index < len(fields) else ""
        id_value = fields[id_index] if id_index is not None and id_index < len(fields) else None
        yield number, smiles, id_value, None


def _is_binary(type_: pa.DataType) -> bool:
    return (
        pa.types.is_binary(type_) or pa.types.is_large_binary(type_) or pa.types.is_fixed_size_binary(type_)
    )


def _check_text_column(schema: pa.Schema, name: str, path: str) -> None:
    """A ValueError naming the file unless column `name` can be read as strings."""
    type_ = schema.field(name).type
    if _is_binary(type_):
        return
    try:
        pa.array([], type_).cast(pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # a list, a struct, ...
        raise ValueError(f"{path}: column {name!r} is {type_}, expected strings (or numbers)") from None


def _strings(column: pa.Array, name: str, path: str) -> list[str | None]:
    """A Parquet column as strings: binary decoded as UTF-8 with invalid bytes replaced (the
    views stage rejects the replacement character as a parse error), other types cast."""
    if _is_binary(column.type):
        return [None if v is None else v.decode("utf-8", "replace") for v in column.to_pylist()]
    try:
        return column.cast(pa.string()).to_pylist()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
        raise ValueError(
            f"{path}: column {name!r} ({column.type}) cannot be read as strings: {error}"
        ) from None


def _parquet_rows(f, path, fmt, smiles_column, id_column) -> Iterator[Row]:
    source = PurePosixPath(path).name
    if source.lower().endswith(".gz"):
        raise ValueError(f"{path}: gzipped Parquet is not supported (Parquet compresses its own pages)")
    try:
        parquet = pq.ParquetFile(f)
    except (pa.ArrowException, OSError) as error:  # not Parquet, or the footer was cut off
        yield _unreadable_row(source, 1, f"not a readable Parquet file: {error}")
        return
    names = parquet.schema_arrow.names
    smiles_name = _pick(names, smiles_column, SMILES_CANDIDATES, "SMILES", path)
    id_name = _pick(names, id_column, ID_CANDIDATES, "id", path)
    columns = [smiles_name] if id_name is None else [smiles_name, id_name]
    for name in columns:
        _check_text_column(parquet.schema_arrow, name, path)
    number = 0
    batches = parquet.iter_batches(batch_size=4096, columns=columns)
    while True:
        try:
            batch = next(batches, None)
        except (pa.ArrowException, OSError) as error:  # a damaged row group: keep the rows before it
            yield _unreadable_row(source, number + 1, f"{type(error).__name__}: {error}")
            return
        if batch is None:
            return
        smiles = _strings(batch.column(smiles_name), smiles_name, path)
        ids = _strings(batch.column(id_name), id_name, path) if id_name else [None] * len(smiles)
        for s, i in zip(smiles, ids, strict=True):
            number += 1
            yield number, s, i, None


def _sdf_records(f) -> Iterator[str]:
    lines: list[str] = []
    for _, line in _lines(f):
        if line.startswith("$$$$"):
            yield "".join(lines)
            lines = []
        else:
            lines.append(line)
    # The last record without a terminator; cut off by a read error it is part of the damage.
    if any(line.strip() for line in lines) and getattr(f, "error", None) is None:
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
