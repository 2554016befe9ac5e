"""Item 1, hostile input: the embed job over the generated hostile corpus of every format.

    python benchmarks/reliability/rel_hostile.py --rows 10000 --workdir /tmp/rel-hostile \
        [--model tiny|shipped|DIR] [--broken-jobs each] [--out hostile.json]

Figures: rows tried (the job's count and the reader's, against the generator's manifest); crashes
of the job (must be 0); rows neither embedded nor in the errors table (must be 0); ids in both
tables and duplicated rows (0); duplicated ids after a re-run (0); ids the generator wrote that
are missing, good molecules not embedded, stored inputs that are not the first occurrence (0);
each error code's count; what each broken file gives (rows, or a refusal that names the file).
"""

from __future__ import annotations

import argparse
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import hostile_inputs
from rel_common import resolve_model, timed, write_report


def _read_catalog_file():
    try:
        from mvclam.engine.io import read_catalog_file
    except ImportError:  # the layout before engine/io
        from mvclam.jobs.embed_io import read_catalog_file
    return read_catalog_file


def reader_rows(path: str | Path) -> list[dict[str, Any]]:
    """The rows the job's reader yields for `path` (a .gz decompressed by Arrow, as in the job)."""
    import pyarrow as pa
    import pyarrow.fs as pafs

    path = str(path)
    fs = pafs.LocalFileSystem()
    if path.endswith((".parquet", ".pq")):
        stream = fs.open_input_file(path)
    else:
        stream = fs.open_input_stream(path, compression="gzip" if path.endswith(".gz") else None)
    blocks = list(_read_catalog_file()(stream, path, rows_per_block=4096))
    return pa.concat_tables(blocks).select(["id", "input", "read_error"]).to_pylist() if blocks else []


def _tables(db: Path, table: str) -> tuple[dict[str, dict], dict[str, dict], int, int]:
    """(embedded id -> row, failed id -> row, embedded rows, error rows)."""
    import lancedb

    connection = lancedb.connect(str(db))
    names = set(connection.list_tables().tables)
    embedded: dict[str, dict] = {}
    failed: dict[str, dict] = {}
    n_embedded = n_failed = 0
    if table in names:
        data = (
            connection.open_table(table).to_lance().to_table(columns=["id", "input_smiles", "model_version"])
        )
        n_embedded = data.num_rows
        embedded = {r["id"]: r for r in data.to_pylist()}
    if f"{table}_errors" in names:
        data = (
            connection.open_table(f"{table}_errors")
            .to_lance()
            .to_table(columns=["id", "input", "error_code", "reason"])
        )
        n_failed = data.num_rows
        failed = {r["id"]: r for r in data.to_pylist()}
    return embedded, failed, n_embedded, n_failed


def conservation(read_ids: list[str], db: Path, table: str) -> dict[str, Any]:
    """Every distinct id read is in exactly one table, once; nothing else is there."""
    embedded, failed, n_embedded, n_failed = _tables(db, table)
    distinct = set(read_ids)
    stored = set(embedded) | set(failed)
    codes = Counter(r["error_code"] for r in failed.values())
    return {
        "rows_read": len(read_ids),
        "distinct_ids_read": len(distinct),
        "embedded_rows": n_embedded,
        "error_rows": n_failed,
        "rows_lost": len(distinct - stored),
        "rows_unexpected": len(stored - distinct),
        "ids_in_both_tables": len(set(embedded) & set(failed)),
        "duplicate_rows": (n_embedded - len(embedded)) + (n_failed - len(failed)),
        "error_codes": dict(sorted(codes.items())),
        "max_reason_chars": max((len(r["reason"] or "") for r in failed.values()), default=0),
        "lost_examples": [repr(i)[:80] for i in sorted(distinct - stored)[:5]],
    }


def check_manifest(files: list[dict], db: Path, table: str) -> dict[str, Any]:
    """The generator's own expectations: ids found, good molecules embedded, first occurrence kept."""
    embedded, failed, _, _ = _tables(db, table)
    missing, not_embedded, wrong_input, garbage_embedded = [], [], [], []
    checked = 0
    for f in files:
        for rid, (placement, stored_input) in f["checked_ids"].items():
            checked += 1
            if rid in embedded:
                got = embedded[rid]["input_smiles"]
                if placement == "failed":
                    garbage_embedded.append((Path(f["path"]).name, repr(rid)[:60], repr(got)[-20:]))
            elif rid in failed:
                got = failed[rid]["input"]
                if placement == "embedded":
                    not_embedded.append((Path(f["path"]).name, repr(rid)[:60], failed[rid]["error_code"]))
            else:
                missing.append((Path(f["path"]).name, repr(rid)[:60]))
                continue
            if stored_input is not None and got != stored_input:
                wrong_input.append((Path(f["path"]).name, repr(rid)[:60]))
    return {
        "ids_checked": checked,
        "ids_missing": len(missing),
        "good_not_embedded": len(not_embedded),
        "inputs_not_first_occurrence": len(wrong_input),
        "garbage_embedded": len(garbage_embedded),
        "examples": {
            "missing": missing[:5],
            "good_not_embedded": not_embedded[:5],
            "wrong_input": wrong_input[:5],
            "garbage_embedded": garbage_embedded[:5],
        },
    }


def classify_refusal(error: BaseException, path: str) -> dict[str, Any]:
    text = str(error)
    name = Path(path).name
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # Ray wraps a task's error in its traceback: the line naming the file is the message.
    message = next((line for line in lines if name in line), lines[-1] if lines else "")
    return {
        "outcome": "refused",
        "type": type(error).__name__,
        "names_file": name in text,
        "message": message[:300],
    }


def broken_reader_outcomes(broken: list[dict]) -> dict[str, dict[str, Any]]:
    """What the reader (the job's read task) makes of each broken file."""
    outcomes: dict[str, dict[str, Any]] = {}
    for item in broken:
        name = Path(item["path"]).name
        try:
            rows = reader_rows(item["path"])
        except Exception as error:
            outcome = classify_refusal(error, item["path"])
        else:
            outcome = {
                "outcome": "rows",
                "rows": len(rows),
                "error_rows": sum(r["read_error"] is not None for r in rows),
            }
        outcome["expect"] = item["expect"]
        outcome["why"] = item["why"]
        expected = item["expect"]
        if outcome["outcome"] == "refused":
            outcome["clear"] = bool(outcome["names_file"]) and expected in ("refused", "rows-or-refused")
        else:
            outcome["clear"] = expected in ("rows", "rows-or-refused")
        outcomes[name] = outcome
    return outcomes


def embed_job(inputs: list[str], db: Path, model: str | None, table: str = "molecules", **values: Any):
    from mvclam.jobs.embed import load_embed_job

    settings = dict(
        inputs=inputs,
        db=str(db),
        table=table,
        model=model,
        views_batch_size=64,
        encoder_batch_size=32,
        commit_rows=512,
        progress=False,
    )
    settings.update(values)
    return load_embed_job(None, **settings)


def run(
    workdir: str | Path,
    rows: int = 10_000,
    seed: int = 0,
    good_fraction: float = 0.1,
    mb_lines: int = 2,
    heavy: int = 0,
    model: str = "tiny",
    broken_jobs: str = "one",
    formats: tuple[str, ...] = hostile_inputs.MAIN_FORMATS,
) -> dict[str, Any]:
    """Generates the corpus in `workdir`, embeds it twice (the second run must find everything
    done) and the broken files, and returns the figures. Uses the running Ray, else starts one."""
    from rel_common import ray_session

    from mvclam.jobs.embed import run_embed

    workdir = Path(workdir)
    shutil.rmtree(workdir / "db", ignore_errors=True)
    figures: dict[str, Any] = {"rows_per_format": rows, "formats": list(formats)}
    with timed(figures, "generate_s"):
        manifest = hostile_inputs.generate(
            workdir / "inputs", rows, seed, good_fraction, mb_lines, heavy, formats
        )
    checkpoint = resolve_model(model, workdir)
    owns_ray = ray_session()
    import ray

    try:
        # The reader's rows against the generator's bounds.
        files = manifest["files"]
        read_ids: list[str] = []
        per_file = {}
        for f in files:
            got = reader_rows(f["path"])
            read_ids += [r["id"] for r in got]
            per_file[Path(f["path"]).name] = {
                "records": f["records"],
                "hostile": f["hostile"],
                "rows": len(got),
                "within_bounds": f["min_rows"] <= len(got) <= f["max_rows"],
            }
        figures["files"] = per_file
        # A file yielding more rows than it has records (+ its newline-split ids) splits records.
        figures["files_out_of_bounds"] = sorted(n for n, f in per_file.items() if not f["within_bounds"])
        figures["rows_tried"] = len(read_ids)
        figures["hostile_rows"] = sum(f["hostile"] for f in files)
        crashes: list[str] = []
        db = workdir / "db"
        paths = [f["path"] for f in files]
        started = time.perf_counter()
        try:
            summary = run_embed(embed_job(paths, db, checkpoint))
        except Exception as error:  # a crash of the job: the figure that must be 0
            crashes.append(f"first run: {type(error).__name__}: {str(error)[:300]}")
            summary = None
        figures["embed_s"] = round(time.perf_counter() - started, 1)
        if summary is not None:
            figures["job"] = {
                "rows_in": summary.rows_in,
                "embedded": summary.embedded,
                "failed": summary.failed,
                "duplicates": summary.duplicates,
                "accounted": summary.embedded + summary.failed + summary.duplicates == summary.rows_in,
                "rows_in_equals_reader": summary.rows_in == len(read_ids),
            }
        figures["tables"] = conservation(read_ids, db, "molecules")
        figures["manifest"] = check_manifest(files, db, "molecules")
        try:
            again = run_embed(embed_job(paths, db, checkpoint))
            after = conservation(read_ids, db, "molecules")
            figures["rerun"] = {
                "embedded": again.embedded,
                "failed": again.failed,
                "skipped": again.skipped,
                "duplicate_rows": after["duplicate_rows"],
                "rows_changed": (after["embedded_rows"], after["error_rows"])
                != (figures["tables"]["embedded_rows"], figures["tables"]["error_rows"]),
            }
        except Exception as error:
            crashes.append(f"re-run: {type(error).__name__}: {str(error)[:300]}")
        figures["search"] = search_check(db, checkpoint)

        # Broken files: the reader on each; one job over those read as rows; refusals as jobs.
        broken = manifest["broken"]
        outcomes = broken_reader_outcomes(broken)
        as_rows = [b["path"] for b in broken if outcomes[Path(b["path"]).name]["outcome"] == "rows"]
        refused = [b["path"] for b in broken if outcomes[Path(b["path"]).name]["outcome"] == "refused"]
        broken_ids = [r["id"] for p in as_rows for r in reader_rows(p)]
        try:
            run_embed(embed_job(as_rows, workdir / "broken_db", checkpoint))
            figures["broken_rows_job"] = conservation(broken_ids, workdir / "broken_db", "molecules")
        except Exception as error:
            crashes.append(f"broken files read as rows: {type(error).__name__}: {str(error)[:300]}")
        jobs = refused if broken_jobs == "each" else refused[:1]
        job_refusals = {}
        for path in jobs:
            db_path = workdir / f"refused_db_{Path(path).stem}"
            try:
                run_embed(embed_job([path], db_path, checkpoint))
                job_refusals[Path(path).name] = {"outcome": "ran"}
            except Exception as error:
                outcome = classify_refusal(error, path)
                from rel_common import table_names

                outcome["tables_left"] = table_names(db_path) if db_path.exists() else []
                job_refusals[Path(path).name] = outcome
        figures["broken_files"] = outcomes
        figures["broken_job_refusals"] = job_refusals
        figures["unclear_broken_files"] = sorted(n for n, o in outcomes.items() if not o["clear"])
        figures["crashes"] = len(crashes)
        figures["crash_messages"] = crashes
    finally:
        if owns_ray:
            ray.shutdown()
    return figures


def search_check(db: Path, checkpoint: str | None) -> dict[str, Any]:
    """A searcher over the hostile table returns every row it ranks (its id lookups quote ids
    with quotes, NULs and newlines correctly)."""
    from mvclam.engine.search import CatalogSearcher

    searcher = CatalogSearcher(db, "molecules", checkpoint=checkpoint)
    rows = searcher.table.count_rows()
    k = min(1000, rows)
    hits = searcher.search_text("a molecule with a ring", k=k)
    return {"k": k, "hits": len(hits), "hits_missing": k - len(hits)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--rows", type=int, default=10_000, help="hostile rows per format")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--good-fraction", type=float, default=0.1)
    parser.add_argument("--mb-lines", type=int, default=2)
    parser.add_argument("--heavy", type=int, default=0)
    parser.add_argument("--model", default="tiny", help="tiny | shipped | checkpoint directory")
    parser.add_argument("--broken-jobs", choices=("one", "each"), default="each")
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    figures = run(
        args.workdir,
        args.rows,
        args.seed,
        args.good_fraction,
        args.mb_lines,
        args.heavy,
        args.model,
        args.broken_jobs,
    )
    write_report(args.out, figures)
    return 0 if figures["crashes"] == 0 and figures["tables"]["rows_lost"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
