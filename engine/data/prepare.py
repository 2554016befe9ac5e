"""The view cache: views computed once per unique molecule and stored as Parquet next to the pairs.

    out_dir/pairs.parquet    one row per good pair: cid, source, line, smiles, description, split,
                             then the VIEW_SCHEMA columns (canonical_smiles, inchikey, views ...)
    out_dir/errors.parquet   one row per pair that could not be used: cid, source, line, smiles,
                             error (a ViewErrorCode value or "malformed_line"), reason
    out_dir/weak.parquet     weak-label rows (same layout, `cid` = "lpm24:<line>", split "train")
    out_dir/weak_errors.parquet
    out_dir/manifest.json    counts per split and source, ViewConfig, RDKit version, timings

Work is done in two parallel passes so a molecule written differently in two files is embedded
once: (1) standardise every distinct input SMILES to its canonical SMILES and InChIKey (~1 ms
each), (2) compute views once per distinct canonical SMILES (ETKDG, the expensive part).
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import platform
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mvclam.engine.data.pairs import read_pair_files
from mvclam.engine.data.split import SPLITS, split_of, split_rule
from mvclam.engine.data.weak import DEFAULT_MAX_PER_LABEL_SET, read_weak_labels
from mvclam.engine.views import (
    MoleculeViews,
    ViewConfig,
    ViewError,
    canonical_smiles,
    compute_views,
    inchikey,
    standardize,
    views_to_arrow,
)

PAIRS_FILE = "pairs.parquet"
ERRORS_FILE = "errors.parquet"
WEAK_FILE = "weak.parquet"
WEAK_ERRORS_FILE = "weak_errors.parquet"
MANIFEST_FILE = "manifest.json"
MALFORMED = "malformed_line"
CHUNK_SIZE = 16
DEFAULT_WEAK_MAX_ATOMS = 60  # molecules per task: small enough to balance ETKDG's very uneven cost

ERROR_SCHEMA = pa.schema(
    [
        pa.field("cid", pa.string()),
        pa.field("source", pa.string()),
        pa.field("line", pa.int32()),
        pa.field("smiles", pa.string()),
        pa.field("error", pa.string()),
        pa.field("reason", pa.string()),
    ]
)

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Failure:
    code: str
    reason: str


def _standardise_one(args: tuple[str, ViewConfig]) -> tuple[str, str] | Failure:
    """(canonical SMILES, InChIKey) of one input SMILES, or its Failure."""
    smiles, config = args
    try:
        mol = standardize(smiles, config)
        return canonical_smiles(mol), inchikey(mol)
    except ViewError as exc:
        return Failure(exc.code.value, exc.reason)
    except Exception as exc:  # one odd record must not kill the job
        return Failure("unexpected", f"{type(exc).__name__}: {exc}")


def _views_one(args: tuple[str, ViewConfig]) -> MoleculeViews | Failure:
    smiles, config = args
    try:
        return compute_views(smiles, config)
    except ViewError as exc:
        return Failure(exc.code.value, exc.reason)
    except Exception as exc:
        return Failure("unexpected", f"{type(exc).__name__}: {exc}")


def _parallel_map(
    fn: Callable[[T], R], items: Sequence[T], workers: int, desc: str, log: Callable[[str], None]
) -> list[R]:
    """Ordered map over a spawn pool (RDKit is not fork-safe with threads of an importing parent),
    in-process when workers <= 1; logs progress every ~10 %."""
    results: list[R] = []
    step = max(1, len(items) // 10)
    start = time.perf_counter()

    def consume(iterator: Iterable[R]) -> None:
        for result in iterator:
            results.append(result)
            if len(results) % step == 0 or len(results) == len(items):
                elapsed = time.perf_counter() - start
                log(f"{desc}: {len(results)}/{len(items)} in {elapsed:.0f} s")

    if workers <= 1 or len(items) < 2 * CHUNK_SIZE:
        consume(map(fn, items))
    else:
        with mp.get_context("spawn").Pool(workers) as pool:
            consume(pool.imap(fn, items, chunksize=CHUNK_SIZE))
    return results


@dataclass
class MoleculeTable:
    """Per input row: views or a Failure (views shared between rows of the same molecule)."""

    views: list[MoleculeViews | Failure]
    seconds_standardise: float
    seconds_views: float
    unique_inputs: int
    unique_molecules: int


def compute_unique_views(
    smiles: Sequence[str], config: ViewConfig, workers: int, log: Callable[[str], None]
) -> MoleculeTable:
    t0 = time.perf_counter()
    distinct_inputs = list(dict.fromkeys(smiles))
    standardised = dict(
        zip(
            distinct_inputs,
            _parallel_map(
                _standardise_one, [(s, config) for s in distinct_inputs], workers, "standardise", log
            ),
            strict=True,
        )
    )
    t1 = time.perf_counter()
    canonical = list(dict.fromkeys(r[0] for r in standardised.values() if not isinstance(r, Failure)))
    computed = dict(
        zip(
            canonical,
            _parallel_map(_views_one, [(s, config) for s in canonical], workers, "views", log),
            strict=True,
        )
    )
    t2 = time.perf_counter()
    per_row: list[MoleculeViews | Failure] = []
    for s in smiles:
        first = standardised[s]
        per_row.append(first if isinstance(first, Failure) else computed[first[0]])
    return MoleculeTable(per_row, t1 - t0, t2 - t1, len(distinct_inputs), len(canonical))


def usable_smiles(rows: pa.Table) -> list[str]:
    """SMILES per row, "" for malformed rows (cheap EmptyInputError; the row's own error is kept)."""
    return [
        s if s is not None and e is None else ""
        for s, e in zip(rows.column("smiles").to_pylist(), rows.column("error").to_pylist(), strict=True)
    ]


def _table_with_views(meta: dict[str, list], views: list[MoleculeViews]) -> pa.Table:
    view_table = views_to_arrow(views)
    table = pa.table(meta)
    for field in view_table.schema:
        table = table.append_column(field, view_table.column(field.name))
    return table.replace_schema_metadata(view_table.schema.metadata)


def rows_with_views(
    rows: pa.Table, molecules: list[MoleculeViews | Failure], split_fn: Callable[[str], str]
) -> tuple[pa.Table | None, pa.Table]:
    """(good rows with views, error rows) of a table with cid/source/line/smiles/description/error."""
    good_index, good_views, errors = [], [], {name: [] for name in ERROR_SCHEMA.names}
    records = rows.select(["cid", "source", "line", "smiles", "error"]).to_pylist()
    for index, (record, molecule) in enumerate(zip(records, molecules, strict=True)):
        if record["error"] is not None or isinstance(molecule, Failure):
            code, reason = (
                (MALFORMED, record["error"])
                if record["error"] is not None
                else (molecule.code, molecule.reason)
            )
            for name, value in zip(
                ERROR_SCHEMA.names,
                (record["cid"], record["source"], record["line"], record["smiles"], code, reason),
                strict=True,
            ):
                errors[name].append(value)
        else:
            good_index.append(index)
            good_views.append(molecule)
    kept = rows.take(pa.array(good_index, pa.int64()))
    meta = {
        "cid": kept.column("cid").to_pylist(),
        "source": kept.column("source").to_pylist(),
        "line": kept.column("line").cast(pa.int32()).to_pylist(),
        "smiles": kept.column("smiles").to_pylist(),
        "description": kept.column("description").to_pylist(),
        "split": [split_fn(v.inchikey) for v in good_views],
    }
    good = _table_with_views(meta, good_views) if good_views else None
    return good, pa.table(errors, schema=ERROR_SCHEMA)


def _counts(table: pa.Table | None) -> dict[str, object]:
    if table is None or table.num_rows == 0:
        return {"pairs": 0}
    out: dict[str, object] = {
        "pairs": table.num_rows,
        "molecules": len(set(table.column("inchikey").to_pylist())),
    }
    for split in SPLITS:
        part = table.filter(pc.equal(table.column("split"), split))
        out[split] = {
            "pairs": part.num_rows,
            "molecules": len(set(part.column("inchikey").to_pylist())),
            "by_source": dict(sorted(_value_counts(part.column("source")).items())),
        }
    return out


def _value_counts(column: pa.ChunkedArray) -> dict[str, int]:
    return {item["values"]: item["counts"] for item in pc.value_counts(column).to_pylist()}


def _run_facts(config: ViewConfig, workers: int, molecules: MoleculeTable, start: float) -> dict[str, object]:
    """Manifest fields every preparation records: how views were computed and how long it took."""
    return {
        "view_config": config.to_dict(),
        "workers": workers,
        "seconds": {
            "standardise": round(molecules.seconds_standardise, 1),
            "views": round(molecules.seconds_views, 1),
            "total": round(time.perf_counter() - start, 1),
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _update_manifest(out_dir: Path, key: str, entry: dict[str, object]) -> None:
    path = out_dir / MANIFEST_FILE
    manifest = json.loads(path.read_text()) if path.exists() else {}
    from rdkit import rdBase

    manifest.update(
        {
            "format": "mvclam-prepared-data-v1",
            "split_rule": split_rule(),
            "rdkit_version": rdBase.rdkitVersion,
            "python": platform.python_version(),
        }
    )
    manifest[key] = entry
    path.write_text(json.dumps(manifest, indent=2) + "\n")


def _print(message: str) -> None:
    print(message, flush=True)


def prepare_pairs(
    pair_files: Sequence[str | Path],
    out_dir: str | Path,
    workers: int = 2,
    config: ViewConfig | None = None,
    log: Callable[[str], None] = _print,
) -> dict[str, object]:
    """Reads the pair files, computes views once per molecule, writes pairs/errors Parquet and the
    manifest entry "pairs"; returns that entry."""
    config = config or ViewConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rows = read_pair_files(list(pair_files))
    smiles = usable_smiles(rows)
    log(f"read {rows.num_rows} pair rows from {len(pair_files)} files")
    molecules = compute_unique_views(smiles, config, workers, log)
    good, errors = rows_with_views(rows, molecules.views, split_of)
    if good is not None:
        pq.write_table(good, out_dir / PAIRS_FILE)
    pq.write_table(errors, out_dir / ERRORS_FILE)
    entry = {
        "files": [str(Path(p)) for p in pair_files],
        "rows_read": rows.num_rows,
        "errors": errors.num_rows,
        "errors_by_code": _value_counts(errors.column("error")) if errors.num_rows else {},
        "unique_input_smiles": molecules.unique_inputs,
        "unique_canonical_molecules": molecules.unique_molecules,
        "counts": _counts(good),
        **_run_facts(config, workers, molecules, start),
    }
    _update_manifest(out_dir, "pairs", entry)
    return entry


def held_out_inchikeys(out_dir: str | Path) -> set[str]:
    """InChIKeys of the validation/test pair molecules in a prepared directory."""
    table = pq.read_table(Path(out_dir) / PAIRS_FILE, columns=["inchikey", "split"])
    held = table.filter(pc.not_equal(table.column("split"), "train"))
    return set(held.column("inchikey").to_pylist())


def prepare_weak_labels(
    labels_file: str | Path,
    out_dir: str | Path,
    limit: int | None = None,
    seed: int = 0,
    workers: int = 2,
    config: ViewConfig | None = None,
    held_out: set[str] | None = None,
    max_per_label_set: int | None = DEFAULT_MAX_PER_LABEL_SET,
    max_atoms: int | None = DEFAULT_WEAK_MAX_ATOMS,
    log: Callable[[str], None] = _print,
) -> dict[str, object]:
    """Weak-label rows with views into weak.parquet (split "train"). Rows whose InChIKey is a
    validation/test pair molecule (`held_out`, default: read from out_dir/pairs.parquet, which must
    then exist) are excluded and counted in the manifest, never written.

    `max_atoms` (heavy atoms) rejects large molecules cheaply before any conformer is computed:
    L+M-24 is dominated by lipids (median ~67 heavy atoms, ~1.3 CPU-s per conformer against ~0.2 s
    at <= 60 atoms), so a cap buys ~6x more molecules per CPU-hour. The views of the accepted
    molecules are those of `config` (max_atoms only rejects, it never changes a view).
    """
    config = config or ViewConfig()
    if max_atoms is not None:
        config = dataclasses.replace(config, max_atoms=min(max_atoms, config.max_atoms))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if held_out is None:
        if not (out_dir / PAIRS_FILE).exists():
            raise FileNotFoundError(
                f"{out_dir / PAIRS_FILE} is needed for the leakage filter: prepare the pairs first"
            )
        held_out = held_out_inchikeys(out_dir)
    start = time.perf_counter()
    weak = read_weak_labels(labels_file, limit=limit, seed=seed, max_per_label_set=max_per_label_set)
    log(f"read {weak.num_rows} weak-label rows")
    rows = pa.table(
        {
            "cid": [f"lpm24:{n}" for n in weak.column("line").to_pylist()],
            "source": ["lpm24_train_props"] * weak.num_rows,
            "line": weak.column("line"),
            "smiles": weak.column("smiles"),
            "description": weak.column("description"),
            "error": weak.column("error"),
        }
    )
    molecules = compute_unique_views(usable_smiles(rows), config, workers, log)
    good, errors = rows_with_views(rows, molecules.views, lambda key: "train")
    leaked = 0
    if good is not None:
        keep = pa.array([key not in held_out for key in good.column("inchikey").to_pylist()])
        leaked = good.num_rows - pc.sum(keep).as_py()
        good = good.filter(keep)
        pq.write_table(good, out_dir / WEAK_FILE)
    pq.write_table(errors, out_dir / WEAK_ERRORS_FILE)
    entry = {
        "file": str(labels_file),
        "limit": limit,
        "seed": seed,
        "max_per_label_set": max_per_label_set,
        "max_atoms": max_atoms,
        "rows_read": rows.num_rows,
        "errors": errors.num_rows,
        "errors_by_code": _value_counts(errors.column("error")) if errors.num_rows else {},
        "excluded_held_out_molecules": leaked,
        "rows_written": 0 if good is None else good.num_rows,
        "unique_canonical_molecules": molecules.unique_molecules,
        **_run_facts(config, workers, molecules, start),
    }
    _update_manifest(out_dir, "weak", entry)
    return entry
