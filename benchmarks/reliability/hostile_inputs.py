"""Generator of hostile catalog files: every input format, hostile rows mixed with good ones.

    python benchmarks/reliability/hostile_inputs.py --out /tmp/hostile --rows 10000 [--seed 0]

Writes `hostile.smi`, `hostile.csv`, `hostile.tsv`, `hostile.parquet`, `hostile.sdf` and
`hostile.sdf.gz` (each `--rows` hostile records plus `--good-fraction` of good molecules from
`data/sample_catalog.csv`, shuffled deterministically by `--seed`), a `broken/` folder of damaged
files (missing columns, truncated SDF blocks and gzip streams, Parquet files with a wrong schema
or no Parquet at all) and `manifest.json`: per file the records written, the rows the reader must
yield (exactly, or a range where the format says a record may become several rows), and the ids
the job must find again (good molecules in the embeddings table, the rest in either table).

Nothing is downloaded: every hostile row is made here. Categories (`CATEGORIES`):

* garbage: random bytes and invalid UTF-8, NUL and control characters, 1 MB lines (garbage and a
  1,000,000-atom SMILES), empty and whitespace-only rows, byte-order marks;
* bad chemistry: unparsable SMILES, valence and aromaticity errors, unknown elements, wildcards,
  radicals, isotopes, odd charges, reaction and SMARTS syntax, bad ring closures and stereo;
* size and shape: 400-atom chains and macrocycles, deep branch nesting, multi-fragment salts and
  mixtures (and, with `--heavy N`, N large but accepted molecules per file: slow 3D views);
* bad ids: duplicates (within a file and across files), ids with quotes, tabs, commas, newlines,
  path characters, SQL, format strings, escape sequences, 10,000 characters, empty ids, and ids
  that collide with another row's derived `<file>:<row>` id.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "data" / "sample_catalog.csv"
MAIN_FORMATS = ("smi", "csv", "tsv", "parquet", "sdf", "sdf.gz")
MB = 1_000_000


@dataclass
class Record:
    kind: str  # category name (CATEGORIES)
    group: str  # garbage | chemistry | size | ids | good
    smiles: str | bytes
    id: str | bytes | None
    good: bool = False  # a valid molecule: must end in the embeddings table (when its id is checkable)
    must_fail: bool = False  # not a molecule: must end in the errors table


@dataclass
class FileManifest:
    path: str
    format: str
    records: int
    hostile: int
    good: int
    min_rows: int  # rows the reader must yield (min == max: exactly)
    max_rows: int
    # id -> (expected placement "embedded" | "failed" | "any", expected stored input or None)
    checked_ids: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    kinds: dict[str, int] = field(default_factory=dict)


def good_molecules() -> list[tuple[str, str]]:
    """(id, SMILES) of the good molecules of the shipped sample catalog."""
    with open(SAMPLE, newline="") as handle:
        return [(r["id"], r["smiles"]) for r in csv.DictReader(handle) if not r["id"].startswith("BAD")]


# --- hostile record makers: (rng, n, good SMILES) -> (smiles, id or None; None: the plain id) ------

Maker = Callable[[random.Random, int, str], tuple[str | bytes, str | bytes | None]]


def _random_bytes(rng: random.Random, n: int, good: str) -> tuple[bytes, None]:
    # No newline (that is a row boundary in every text format: `newline_id` covers it).
    data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
    return data.replace(b"\n", b"?"), None


INVALID_UTF8 = (
    b"C\xff\xfeC",
    b"\xc0\xafCCO",  # overlong encoding
    b"CC\x80O",  # lone continuation byte
    b"\xed\xa0\x80CC",  # encoded surrogate
    b"c1cc\xf5\x80cc1",
    b"\xe2\x82",  # cut multi-byte sequence
)


def _invalid_utf8(rng: random.Random, n: int, good: str) -> tuple[bytes, None]:
    return rng.choice(INVALID_UTF8) + good.encode()[: rng.randrange(0, 8)], None


CONTROL = ["\x00", "\x01", "\x07", "\x08", "\x0b", "\x0c", "\x1b[31m", "\x7f", "\x1c", "\x85", "\u2028", "\r"]


def _nul_control(rng: random.Random, n: int, good: str) -> tuple[str, None]:
    at = rng.randrange(len(good) + 1)
    return good[:at] + rng.choice(CONTROL) + good[at:], None


def _mb_garbage(rng: random.Random, n: int, good: str) -> tuple[bytes, None]:
    chunk = bytes(rng.randrange(33, 127) for _ in range(1000)).replace(b'"', b"'")
    return chunk * (MB // 1000), None


def _mb_smiles(rng: random.Random, n: int, good: str) -> tuple[str, None]:
    return "C" * MB, None  # parses (seconds) into 1,000,000 atoms: too_many_atoms


def _empty(rng: random.Random, n: int, good: str) -> tuple[str, None]:
    return "", None


WHITESPACE = (" ", "   ", "\t", " \t \t ", "\u3000", "\xa0", "\x0b\x0c")


def _whitespace(rng: random.Random, n: int, good: str) -> tuple[str, None]:
    return rng.choice(WHITESPACE), None


TRAILING = ("\ufffd", "ü", "ééé", "\x01", "\xa0x", "\x00", " junk", "\tjunk", "\u3000x", "😀")


def _trailing_garbage(rng: random.Random, n: int, good: str) -> tuple[str | bytes, None]:
    """A valid SMILES with garbage after it: not a molecule (RDKit alone takes the prefix)."""
    if rng.random() < 0.2:
        return good.encode() + b"\xff\xfe", None  # invalid UTF-8: the reader makes it U+FFFD
    return good + rng.choice(TRAILING), None


def _bom(rng: random.Random, n: int, good: str) -> tuple[str, None]:
    return "\ufeff" + good, None


UNPARSABLE = (
    "C1CC((",
    "C)(",
    "[C",
    "C]",
    "c1ccc",
    "C1CC2",
    "((((C))))",
    "C==C",
    "C#=C",
    "[CH5+++++++++]",
    "C%",
    "C%1",
    "C(C(C(C",
    "[13]C",
    "[C@@@@@H](F)(Cl)Br",
    "F/C=C/C=C/C\\\\C",
    "CC>>CO",
    "C>C",
    "[#6][#7]",
    "[C;R]C",
    "C$C",
    "C~C",
    "{C}",
    "C|C",
    "not a smiles",
    "SELECT * FROM molecules",
    "<script>alert(1)</script>",
    "..",
    ".",
    "C..C",
    "CC |$A;B;C;D;E;F$|",
    "CC |&1:99|",
    "C |unclosed",
    "[Xx]C",
    "[Q]",
    "[Zz]C",
    "[C:99999999999]",
    "C1" * 60,
)
VALENCE = (
    "C(C)(C)(C)(C)C",
    "[NH4]",
    "O(C)(C)C",
    "F(F)F",
    "[CH5]",
    "N(=O)(=O)=O",
    "C=C=C=C(C)(C)C",
    "Cl(=O)(=O)(=O)(=O)Cl",
)
AROMATICITY = ("c1cccc1", "n1cccc1", "c1ccccc", "c1cc1", "o1cccc1C", "c1ccncc1n", "C1=CC=CC=C1c2ccc2")
UNKNOWN_ELEMENTS = ("[U]", "[Pu]C", "[Fe]", "[Pt](N)(N)(Cl)Cl", "[Og]", "[Au]C#N", "[Hg]CC", "[Na]", "[He]")
WILDCARDS = ("*", "*C", "C*C", "[*]CC", "C[1*]", "[*:1]CC[*:2]", "c1ccccc1*", "[R]C", "[R1]CC")
RADICALS = ("[CH3]", "[CH2]C", "C[O]", "[N]", "[C]", "[OH]", "[O][O]", "C[CH]C")
ISOTOPES = ("[13CH4]", "[2H]C([2H])([2H])O", "[14C]C(=O)O", "[18F]c1ccccc1", "[999C]", "[2H][2H]", "[3H]O")
ODD = ("[H]", "[H][H]", "[H+]", "[C+5]", "[O-2]C", "[Na+].[Cl-]", "O", "[He]", "[C-]#[O+]", "C[N+](C)(C)C")


def _pick(options: tuple[str, ...]) -> Maker:
    def make(rng: random.Random, n: int, good: str) -> tuple[str, None]:
        return rng.choice(options), None

    return make


def _chain400(rng: random.Random, n: int, good: str) -> tuple[str, None]:
    return "C" * 400, None


def _macrocycle400(rng: random.Random, n: int, good: str) -> tuple[str, None]:
    return "C1" + "C" * 398 + "1", None


def _deep_nesting(rng: random.Random, n: int, good: str) -> tuple[str, None]:
    depth = rng.choice((300, 1000))
    return "C(" * depth + "C" + ")" * depth, None


def _deep_parentheses(rng: random.Random, n: int, good: str) -> tuple[str, None]:
    depth = rng.choice((10, 100, 5000))
    return "C" + "(" * depth + "C" + ")" * depth, None


SALT_PARTS = (".[Na+]", ".[Cl-]", ".O", ".O.O.O", ".[K+].[K+]", ".Cl", ".OS(=O)(=O)O", ".[Fe+2]", ".CC(=O)O")


def _salt(rng: random.Random, n: int, good: str) -> tuple[str, None]:
    return good + "".join(rng.choice(SALT_PARTS) for _ in range(rng.randrange(1, 4))), None


def _mixture(rng: random.Random, n: int, good: str) -> tuple[str, None]:
    return rng.choice(("C." * 500 + "C", f"{good}.{good}", "CCO.OCC", "c1ccccc1." * 40 + "C")), None


# Large molecules that are accepted (max_atoms 256) and take seconds to minutes for their 3D view.
HEAVY = ("C" * 200, "C1" + "C" * 148 + "1", "C(" * 120 + "C" + ")" * 120, "c1ccc2cc3ccccc3cc2c1" * 6)


def _plain(rng: random.Random, n: int, good: str) -> tuple[str, None]:
    return good, None


ID_VALUES = (
    "it's",
    "''",
    "'",
    'say "hi"',
    '"',
    'a""b',
    "tab\there",
    "\t",
    "comma,here",
    ",",
    ";semi;",
    "../../etc/passwd",
    "/etc/shadow",
    "C:\\Windows\\System32",
    "a/b/../c",
    "~root",
    "file:///etc/hosts",
    "s3://bucket/key",
    "..",
    "x' OR '1'='1",
    "'; DROP TABLE molecules; --",
    "id IN ('a')",
    "%s%s%n",
    "{0}{1}",
    "$(rm -rf /)",
    "`id`",
    "\x1b[2J",
    "nul\x00id",
    "ü-ß-é",
    "😀",
    "\u202eevil",
    "\\",
    "back\\slash",
    "a\u2028b",
)


def _odd_id(rng: random.Random, n: int, good: str) -> tuple[str, str]:
    return good, f"{rng.choice(ID_VALUES)}#{n}"


def _newline_id(rng: random.Random, n: int, good: str) -> tuple[str, str]:
    return good, rng.choice((f"new\nline{n}", f"cr\r\nlf{n}", f"lone\rcr{n}"))


def _long_id(rng: random.Random, n: int, good: str) -> tuple[str, str]:
    return good, f"long{n}-" + "x" * 10_000


def _empty_id(rng: random.Random, n: int, good: str) -> tuple[str, str]:
    return good, rng.choice(("", " ", "\t"))


def _bad_id_bytes(rng: random.Random, n: int, good: str) -> tuple[str, bytes]:
    return good, b"id\xff\xfe" + str(n).encode()


# (name, group, weight, maker). Weights are relative; every category occurs at least once per file.
CATEGORIES: tuple[tuple[str, str, float, Maker], ...] = (
    ("random_bytes", "garbage", 6, _random_bytes),
    ("invalid_utf8", "garbage", 4, _invalid_utf8),
    ("nul_control", "garbage", 5, _nul_control),
    ("empty", "garbage", 3, _empty),
    ("whitespace", "garbage", 3, _whitespace),
    ("bom", "garbage", 1, _bom),
    ("trailing_garbage", "garbage", 3, _trailing_garbage),
    ("unparsable", "chemistry", 8, _pick(UNPARSABLE)),
    ("valence", "chemistry", 4, _pick(VALENCE)),
    ("aromaticity", "chemistry", 4, _pick(AROMATICITY)),
    ("unknown_element", "chemistry", 3, _pick(UNKNOWN_ELEMENTS)),
    ("wildcard", "chemistry", 3, _pick(WILDCARDS)),
    ("radical", "chemistry", 2, _pick(RADICALS)),
    ("isotope", "chemistry", 2, _pick(ISOTOPES)),
    ("odd_species", "chemistry", 2, _pick(ODD)),
    ("chain400", "size", 1, _chain400),
    ("macrocycle400", "size", 1, _macrocycle400),
    ("deep_nesting", "size", 1, _deep_nesting),
    ("deep_parentheses", "size", 1, _deep_parentheses),
    ("salt", "size", 4, _salt),
    ("mixture", "size", 2, _mixture),
    ("odd_id", "ids", 8, _odd_id),
    ("newline_id", "ids", 1, _newline_id),
    ("long_id", "ids", 1, _long_id),
    ("empty_id", "ids", 2, _empty_id),
    ("bad_id_bytes", "ids", 1, _bad_id_bytes),
    ("duplicate_id", "ids", 4, _plain),  # id filled in by `records`
    ("derived_id_collision", "ids", 1, _plain),  # id filled in by the .smi writer
    ("shared_duplicate_id", "ids", 0, _plain),  # the same ids in every file (added by `records`)
)
# Categories that pair a good molecule with a hostile id: the molecule must still be embedded.
UNIQUE_ID_KINDS = {"odd_id", "newline_id", "long_id", "bad_id_bytes"}
GOOD_MOLECULE_KINDS = {"odd_id", "long_id", "empty_id", "bad_id_bytes", "newline_id", "derived_id_collision"}


def records(
    rows: int, seed: int, good_fraction: float, mb_lines: int, heavy: int, tag: str, file_index: int = 0
) -> list[Record]:
    """`rows` hostile records (every category at least once, plus `mb_lines` 1 MB lines and
    `heavy` large accepted molecules) and `good_fraction * rows` good ones, shuffled by `seed`."""
    rng = random.Random(f"{seed}-{tag}")
    goods = good_molecules()
    weighted = [c for c in CATEGORIES if c[2] > 0]
    out: list[Record] = []
    for name, group, _, make in weighted:  # one of each first
        out.append(Record(name, group, *make(rng, len(out), rng.choice(goods)[1])))
    for i in range(mb_lines):
        # The j-th 1 MB line of file k is a 1,000,000-atom SMILES when (k + j) % 6 == 0 (seconds to
        # parse, so one per file at most), garbage otherwise.
        make = _mb_smiles if (file_index + i) % len(MAIN_FORMATS) == 0 else _mb_garbage
        out.append(Record("mb_line", "garbage", *make(rng, len(out), "")))
    for i in range(heavy):
        out.append(Record("heavy", "size", HEAVY[i % len(HEAVY)], None, good=True))
    for i in range(3):
        out.append(Record("shared_duplicate_id", "ids", rng.choice(goods)[1], f"shared-duplicate-{i}"))
    weights = [c[2] for c in weighted]
    while len(out) < rows:
        name, group, _, make = rng.choices(weighted, weights)[0]
        out.append(Record(name, group, *make(rng, len(out), rng.choice(goods)[1])))
    for i in range(round(rows * good_fraction)):
        smiles = goods[i % len(goods)][1]
        out.append(Record("good", "good", smiles, None, good=True))
    for record in out:
        if record.kind in GOOD_MOLECULE_KINDS:
            record.good = True
        record.must_fail = record.kind == "trailing_garbage"
        if record.kind in UNIQUE_ID_KINDS:  # the same hostile id in two files is not meant
            record.id = record.id + (f"@{tag}".encode() if isinstance(record.id, bytes) else f"@{tag}")
    rng.shuffle(out)
    # Plain ids for the records without one; duplicates reuse an earlier good record's id.
    earlier: list[str] = []
    for n, record in enumerate(out):
        if record.kind == "duplicate_id":
            record.id = rng.choice(earlier) if earlier else f"{tag}-dup-{n}"
            record.good = False
        elif record.id is None and record.kind not in ("empty",):
            record.id = f"{tag}-{n:06d}"
        if record.good and isinstance(record.id, str) and record.kind == "good":
            earlier.append(record.id)
    return out


def _text(value: str | bytes | None) -> str:
    if value is None:
        return ""
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def _reader_text(value: str | bytes | None) -> str | None:
    """What the reader makes of a value: UTF-8 with replacement characters."""
    if value is None:
        return None
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _plain_id(record_id: str | None) -> str | None:
    """The id the reader yields (stripped), or None when it may be changed by the format."""
    if record_id is None or "\n" in record_id or "\r" in record_id:
        return None
    stripped = record_id.strip()
    return stripped or None


class _Checks:
    """Collects checked ids: the first occurrence of each id across the files of one corpus."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def add(self, manifest: FileManifest, record: Record, reader_id: str | None, stored: str | None) -> None:
        if reader_id is None:
            return
        if reader_id in self.seen:
            return
        self.seen.add(reader_id)
        placement = "embedded" if record.good else "failed" if record.must_fail else "any"
        manifest.checked_ids[reader_id] = (placement, stored)

    def mark(self, reader_id: str) -> None:
        self.seen.add(reader_id)


def write_smi(path: Path, recs: list[Record], checks: _Checks) -> FileManifest:
    m = FileManifest(str(path), "smi", len(recs), 0, 0, 0, 0)
    out = io.BytesIO()
    line = 0
    no_id_lines: list[int] = []
    for record in recs:
        smiles = record.smiles if isinstance(record.smiles, bytes) else record.smiles.encode("utf-8")
        if record.kind == "derived_id_collision" and no_id_lines:
            record.id = f"{path.name}:{rng_choice(no_id_lines, line)}"
            record.good = False
        rid = record.id.encode("utf-8") if isinstance(record.id, str) else record.id
        body = smiles + (b" " + rid if rid else b"")
        out.write(body + b"\n")
        first = line + 1
        line += body.count(b"\n") + 1
        if not rid:
            no_id_lines.append(first)
        text = _reader_text(smiles)
        plain_smiles = text is not None and text.strip() and not any(ch.isspace() for ch in text)
        reader_id = _plain_id(_reader_text(record.id))
        if record.kind == "derived_id_collision":
            checks.mark(reader_id or "")
            reader_id = None
        if plain_smiles and reader_id is not None and not reader_id.startswith("|"):
            checks.add(m, record, reader_id, text)
        elif not rid and plain_smiles:
            checks.add(m, record, f"{path.name}:{first}", text)
    path.write_bytes(out.getvalue())
    m.min_rows = m.max_rows = line
    return m


def rng_choice(values: list[int], salt: int) -> int:
    return values[salt % len(values)]


def write_delimited(path: Path, recs: list[Record], checks: _Checks, delimiter: str) -> FileManifest:
    m = FileManifest(str(path), "tsv" if delimiter == "\t" else "csv", len(recs), 0, 0, 0, 0)
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\n")
    writer.writerow(["id", "smiles", "note"])
    extra = 0
    for n, record in enumerate(recs, start=1):
        note = "multi\nline note" if n % 97 == 0 else ("x" * 50 if n % 13 == 0 else "")
        smiles, rid = _text(record.smiles), _text(record.id)
        writer.writerow([rid, smiles, note])
        extra += rid.count("\n") + smiles.count("\n")
        line_text = f"{rid}{smiles}{note}"
        reader_id = _plain_id(_reader_text(record.id))
        too_long = max(len(smiles), len(rid)) > 131072  # the csv module's field limit
        if ("\x00" in line_text and "\r" in line_text) or too_long or "\n" in smiles:
            continue
        if reader_id is None and not rid.strip():
            reader_id = f"{path.name}:{n}" if extra == 0 else None
        checks.add(m, record, reader_id, _reader_text(record.smiles))
    path.write_bytes(buffer.getvalue().encode("utf-8", "surrogateescape"))
    m.min_rows, m.max_rows = len(recs), len(recs) + extra
    return m


def write_parquet(path: Path, recs: list[Record], checks: _Checks) -> FileManifest:
    m = FileManifest(str(path), "parquet", len(recs), 0, 0, len(recs), len(recs))
    ids = [_reader_text(r.id) if r.id not in (None, b"") else None for r in recs]
    smiles = [_reader_text(r.smiles) for r in recs]
    ids = [None if i == "" else i for i in ids]
    table = pa.table(
        {
            "id": pa.array(ids, pa.string()),
            "smiles": pa.array(smiles, pa.string()),
            "n": pa.array(range(len(recs)), pa.int64()),
        }
    )
    pq.write_table(table, path, row_group_size=max(1, len(recs) // 7 or 1))
    for n, (record, rid) in enumerate(zip(recs, ids, strict=True), start=1):
        reader_id = rid.strip() if rid is not None else None
        checks.add(m, record, reader_id or f"{path.name}:{n}", smiles[n - 1])
    return m


def _molblock(smiles: str | bytes) -> str | None:
    from rdkit import Chem, rdBase

    if isinstance(smiles, bytes) or len(smiles) > 5000 or not smiles.strip():
        return None
    with rdBase.BlockLogs():
        mol = Chem.MolFromSmiles(smiles)  # a kekulised block where RDKit can sanitise the molecule
        if mol is not None and 0 < mol.GetNumAtoms() <= 999:
            return Chem.MolToMolBlock(mol)
        mol = Chem.MolFromSmiles(smiles, sanitize=False)
        if mol is None or mol.GetNumAtoms() == 0 or mol.GetNumAtoms() > 999:
            return None
        try:
            mol.UpdatePropertyCache(strict=False)
            return Chem.MolToMolBlock(mol, kekulize=False)
        except Exception:
            return None


def _sdf_safe(text: str) -> str:
    """A title or data line: one line, never a record separator."""
    text = text.replace("\r", " ").replace("\n", " ")
    return "_" + text if text.startswith("$$$$") else text


def write_sdf(path: Path, recs: list[Record], checks: _Checks, compress: bool) -> FileManifest:
    m = FileManifest(str(path), "sdf.gz" if compress else "sdf", len(recs), 0, 0, len(recs), len(recs))
    out = io.StringIO()
    for n, record in enumerate(recs, start=1):
        title = _sdf_safe(_text(record.id))
        block = _molblock(record.smiles)
        made = block is not None
        if block is None:  # garbage: a block RDKit cannot read (lines of the raw value, no M  END)
            raw = _text(record.smiles)[:MB]
            lines = [_sdf_safe(part) for part in raw.split("\n")] or [""]
            block = "garbage\n\n" + "\n".join(lines) + "\n"
        else:
            block = block.split("\n", 1)[1]  # RDKit's own (empty) title line replaced by ours
        out.write(f"{title}\n{block}")
        if not block.endswith("\n"):
            out.write("\n")
        out.write(f"> <note>\n{_sdf_safe(record.kind)}\n\n$$$$\n")
        reader_id = _reader_text(title.encode("utf-8", "surrogateescape")).strip()
        if record.must_fail and made:  # RDKit wrote the prefix molecule's block: a good record now
            record = replace(record, must_fail=False)
        checks.add(m, record, reader_id or f"{path.name}:{n}", None)
    data = out.getvalue().encode("utf-8", "surrogateescape")
    if compress:
        path.write_bytes(gzip.compress(data, compresslevel=1))
    else:
        path.write_bytes(data)
    return m


def generate(
    out: str | Path,
    rows: int = 10_000,
    seed: int = 0,
    good_fraction: float = 0.1,
    mb_lines: int = 2,
    heavy: int = 0,
    formats: tuple[str, ...] = MAIN_FORMATS,
) -> dict:
    """Writes the corpus into `out` and returns (and writes) its manifest."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    checks = _Checks()
    files: list[FileManifest] = []
    for file_index, fmt in enumerate(formats):
        tag = fmt.replace(".", "")
        recs = records(rows, seed, good_fraction, mb_lines, heavy, tag, file_index)
        path = out / f"hostile.{fmt}"
        if fmt == "smi":
            manifest = write_smi(path, recs, checks)
        elif fmt in ("csv", "tsv"):
            manifest = write_delimited(path, recs, checks, "\t" if fmt == "tsv" else ",")
        elif fmt == "parquet":
            manifest = write_parquet(path, recs, checks)
        else:
            manifest = write_sdf(path, recs, checks, compress=fmt.endswith(".gz"))
        manifest.good = sum(r.kind == "good" for r in recs)
        manifest.hostile = len(recs) - manifest.good
        for r in recs:
            manifest.kinds[r.kind] = manifest.kinds.get(r.kind, 0) + 1
        files.append(manifest)
    broken = write_broken(out / "broken")
    result = {
        "rows_per_format": rows,
        "seed": seed,
        "good_fraction": good_fraction,
        "files": [asdict(f) for f in files],
        "broken": broken,
    }
    (out / "manifest.json").write_text(json.dumps(result, indent=1, ensure_ascii=True))
    return result


def _sdf_block(smiles: str, title: str) -> str:
    from rdkit import Chem

    block = Chem.MolToMolBlock(Chem.MolFromSmiles(smiles))
    return f"{title}\n{block.split(chr(10), 1)[1]}$$$$\n"


def _parquet(path: Path, table: pa.Table) -> None:
    pq.write_table(table, path)


def write_broken(out: Path) -> list[dict]:
    """Damaged files, one problem each: `expect` is "rows" (read as rows, with error rows for the
    damage) or "refused" (the job stops with an error that names the file)."""
    out.mkdir(parents=True, exist_ok=True)
    goods = good_molecules()[:6]
    good_lines = "".join(f"{i},{s}\n" for i, s in goods)
    sdf = "".join(_sdf_block(s, i) for i, s in goods)
    files: list[tuple[str, bytes, str, str]] = [
        ("missing_smiles_column.csv", b"id,name\na,CCO\n", "refused", "no SMILES column"),
        ("missing_id_column.csv", ("smiles\n" + "".join(f"{s}\n" for _, s in goods)).encode(), "rows", ""),
        ("header_only.csv", b"id,smiles\n", "rows", "no rows"),
        ("empty.csv", b"", "rows", "no rows"),
        ("empty.smi", b"", "rows", "no rows"),
        ("blank_lines.smi", b"\n\n  \n\t\n", "rows", "empty rows"),
        (
            "short_and_long_rows.csv",
            ("id,smiles,note\nonly-id\n" + good_lines + "a,b,c,d,e\n").encode(),
            "rows",
            "",
        ),
        ("unclosed_quote.csv", ('id,smiles\nq1,"CCO\n' + good_lines).encode(), "rows", "unclosed quote"),
        ("bom_header.csv", ("\ufeffid,smiles\n" + good_lines).encode(), "rows", "byte-order mark"),
        ("crlf.csv", ("id,smiles\r\n" + good_lines.replace("\n", "\r\n")).encode(), "rows", ""),
        ("utf16.csv", ("id,smiles\n" + good_lines).encode("utf-16"), "refused", "no SMILES column"),
        ("truncated_block.sdf", (sdf + sdf.split("M  END")[0][:200]).encode(), "rows", "truncated block"),
        ("no_terminator.sdf", sdf.rstrip("$\n").encode(), "rows", "last $$$$ missing"),
        ("dollar_title.sdf", ("$$$$ title\n" + sdf).encode(), "rows", "title is a separator"),
        ("garbage.sdf", bytes(range(256)) * 40, "rows", "garbage"),
        ("truncated.sdf.gz", gzip.compress(sdf.encode() * 50)[:-60], "rows", "cut gzip stream"),
        ("not_gzip.smi.gz", b"CCO ethanol\n", "rows", "plain text named .gz"),
        ("bad_crc.csv.gz", _bad_crc(("id,smiles\n" + good_lines).encode()), "rows", "gzip CRC"),
    ]
    manifest = []
    for name, data, expect, why in files:
        (out / name).write_bytes(data)
        manifest.append({"path": str(out / name), "expect": expect, "why": why})
    parquets = [
        ("int_smiles.parquet", pa.table({"id": ["a", "b"], "smiles": [1, 2]}), "rows", "integer SMILES"),
        (
            "null_values.parquet",
            pa.table({"id": ["a", None, "c"], "smiles": [None, "CCO", "C"]}),
            "rows",
            "null id and SMILES",
        ),
        ("no_smiles.parquet", pa.table({"id": ["a"], "name": ["CCO"]}), "refused", "no SMILES column"),
        (
            "binary_smiles.parquet",
            pa.table({"id": ["a", "b"], "smiles": pa.array([b"CCO", b"\xff\xfe"], pa.binary())}),
            "rows-or-refused",
            "binary SMILES with invalid UTF-8",
        ),
        (
            "list_smiles.parquet",
            pa.table({"id": ["a", "b"], "smiles": [["CCO"], ["C"]]}),
            "rows-or-refused",
            "list<string> SMILES",
        ),
        (
            "struct_id.parquet",
            pa.table({"id": [{"x": 1}, {"x": 2}], "smiles": ["CCO", "C"]}),
            "rows-or-refused",
            "struct ids",
        ),
    ]
    for name, table, expect, why in parquets:
        _parquet(out / name, table)
        manifest.append({"path": str(out / name), "expect": expect, "why": why})
    whole = (out / "int_smiles.parquet").read_bytes()
    for name, data, why in (
        ("not_parquet.parquet", bytes(range(256)) * 8, "not a Parquet file"),
        ("truncated.parquet", whole[: len(whole) // 2], "truncated Parquet file"),
    ):
        (out / name).write_bytes(data)
        manifest.append({"path": str(out / name), "expect": "rows-or-refused", "why": why})
    return manifest


def _bad_crc(data: bytes) -> bytes:
    compressed = bytearray(gzip.compress(data))
    compressed[-8] ^= 0xFF  # CRC32 of the trailer
    return bytes(compressed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True)
    parser.add_argument("--rows", type=int, default=10_000, help="hostile rows per format")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--good-fraction", type=float, default=0.1)
    parser.add_argument("--mb-lines", type=int, default=2, help="1 MB lines per file")
    parser.add_argument("--heavy", type=int, default=0, help="large accepted molecules per file (slow)")
    args = parser.parse_args(argv)
    manifest = generate(args.out, args.rows, args.seed, args.good_fraction, args.mb_lines, args.heavy)
    for f in manifest["files"]:
        print(
            f"{f['path']}: {f['records']} records ({f['hostile']} hostile), rows {f['min_rows']}-{f['max_rows']}"
        )
    print(f"{len(manifest['broken'])} broken files in {Path(args.out) / 'broken'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
