"""Item 3, readers during writes, and two embed jobs on one table at once.

    python benchmarks/reliability/rel_readers.py --workdir /tmp/rel-readers --base 400 --append 400 \
        --other 200 [--model tiny] [--out readers.json]

Readers: an in-process `CatalogSearcher` (the Python API, re-reading the table's latest version
before every query) and `mvclam serve` (HTTP, a child process), each in a loop of text and molecule
queries with filters, all with model A. Writers, at the same time, each a `mvclam` child process:
an embed with model A appending `--append` new ids, then an embed with model B (another version)
of `--other` other ids into the same table; a caption job updating rows; and `mvclam index`
building and then optimising an ANN index, again and again until the others are done.
Figures: queries and errors per reader (errors must be 0), results with rows of another model
version (0), every writer's exit status, and the final table (exact rows, no duplicated id).

Two jobs: `mvclam embed` twice on the same catalog and table, started at the same moment. Either both succeed with exact counts, or the second is refused with a clear
error; the figure says which happened (`outcome`).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from rel_common import (
    Child,
    embed_args,
    kill_child_tree,
    mvclam_command,
    resolve_model,
    start_child,
    table_state,
    write_catalog,
    write_report,
)
from rel_http import QUERIES, SMILES, Server, request


def _wait(child: Child, timeout: float = 3600) -> int:
    try:
        return child.wait(timeout)
    except Exception:
        kill_child_tree(child)
        return -9


def _error_line(child: Child) -> str:
    lines = [line for line in child.output().splitlines() if "Error" in line or "error:" in line]
    return lines[-1][:300] if lines else ""


def readers_during_writes(
    workdir: Path,
    base: int,
    append: int,
    other: int,
    model: str,
    http_clients: int = 2,
    caption: bool = True,
    index: bool = True,
    max_new_tokens: int = 4,
    caption_rows: int | None = None,
    model_b: str | None = None,
    reader_pause_s: float = 0.05,
    index_pause_s: float = 1.0,
) -> dict[str, Any]:
    """`reader_pause_s` between a reader's queries and `index_pause_s` between index builds: on
    a small machine the readers and index builds otherwise take the CPU the writers need."""
    from mvclam.engine.search import CatalogSearcher

    db = workdir / "db"
    shutil.rmtree(db, ignore_errors=True)
    model_a = resolve_model(model, workdir, 0, captioner=caption)
    # Model B: another version with the same architecture (same table schema).
    if model_b is None:
        model_b = resolve_model("tiny", workdir, 1) if model == "tiny" else "fresh"
    base_csv = write_catalog(workdir / "base.csv", base, prefix="a")
    append_csv = write_catalog(workdir / "append.csv", append, prefix="a", offset=base)
    other_csv = write_catalog(workdir / "other.csv", other, prefix="b")
    logs = workdir / "logs"
    # A child like every writer: this process's Ray, if any, belongs to whoever called it.
    base_args = embed_args([base_csv], db, model_a, commit_rows=16, views_batch_size=16, batch_size=16)
    base_run = start_child(mvclam_command(*base_args), logs / "base.log")
    if _wait(base_run) != 0:
        raise RuntimeError(f"the base embed failed: {base_run.output()[-2000:]}")
    figures: dict[str, Any] = {"base": base, "append": append, "other": other}
    api = CatalogSearcher(db, "molecules", checkpoint=model_a, refresh_seconds=0)
    version_a = api.model.model_version
    server = Server(workdir, db, model_a)
    stop = threading.Event()
    counts: dict[str, Counter] = {}
    errors: dict[str, list[str]] = {}
    lock = threading.Lock()

    def note(reader: str, key: str, error: str | None = None) -> None:
        with lock:
            counts.setdefault(reader, Counter())[key] += 1
            if error:
                errors.setdefault(reader, []).append(error[:200])

    def api_reader() -> None:
        rng = random.Random(1)
        while not stop.is_set():
            try:
                if rng.random() < 0.7:
                    where = "mw < 400" if rng.random() < 0.3 else None
                    hits = api.search_text(rng.choice(QUERIES), k=rng.randint(1, 50), where=where)
                else:
                    hits = api.search_molecule(rng.choice(SMILES), k=rng.randint(1, 20))
                note("api", "queries")
                mixed = [h for h in hits if h.columns.get("model_version") != version_a]
                if mixed:
                    note("api", "mixed_versions", f"{len(mixed)} hits of another model version")
                if len({h.id for h in hits}) != len(hits):
                    note("api", "duplicate_hits", "a result listed one id twice")
            except Exception as error:
                note("api", "errors", f"{type(error).__name__}: {error}")
            stop.wait(reader_pause_s)  # a steady stream, not a busy loop (the writers share the CPUs)

    def http_reader(index_: int) -> None:
        rng = random.Random(100 + index_)
        name = f"http{index_}"
        while not stop.is_set():
            if rng.random() < 0.7:
                path, body = (
                    "/api/search",
                    {"query": rng.choice(QUERIES), "k": rng.randint(1, 50), "depict": False},
                )
            else:
                path, body = (
                    "/api/similar",
                    {"smiles": rng.choice(SMILES), "k": rng.randint(1, 20), "depict": False},
                )
            try:
                status, _, data = request(server.port, "POST", path, json.dumps(body).encode(), timeout=300)
            except OSError as error:
                note(name, "errors", f"{type(error).__name__}: {error}")
                continue
            note(name, "queries")
            if status != 200:
                note(name, "errors", f"status {status}: {data[:120]!r}")
                continue
            ids = [r["id"] for r in json.loads(data)["results"]]
            if any(not i.startswith("a-") for i in ids):
                note(name, "mixed_versions", "a result of model B's rows")
            if len(set(ids)) != len(ids):
                note(name, "duplicate_hits", "a result listed one id twice")
            stop.wait(reader_pause_s)

    writers: dict[str, Any] = {}
    writers_done = threading.Event()

    def embedder() -> None:
        for name, catalog, ckpt in (
            ("embed_append", append_csv, model_a),
            ("embed_other_version", other_csv, model_b),
        ):
            child = start_child(
                mvclam_command(*embed_args([catalog], db, ckpt, commit_rows=16, views_batch_size=16)),
                logs / f"{name}.log",
            )
            rc = _wait(child)
            writers[name] = {
                "rc": rc,
                "error": _error_line(child) if rc else "",
                "summary": child.json_output(),
            }

    def captioner() -> None:
        args = ["caption", "--db", str(db), "--table", "molecules", "--json", "--commit-rows", "8"]
        args += ["--batch-size", "4", "--max-new-tokens", str(max_new_tokens), "--threads", "1"]
        if caption_rows:
            args += ["--limit", str(caption_rows)]
        if model_a:
            args += ["--model", model_a]
        child = start_child(mvclam_command(*args), logs / "caption.log")
        rc = _wait(child)
        writers["caption"] = {
            "rc": rc,
            "error": _error_line(child) if rc else "",
            "summary": child.json_output(),
        }

    def indexer() -> None:
        runs = []
        while not writers_done.is_set() or len(runs) < 2:
            args = ["index", "--db", str(db), "--table", "molecules", "--index-type", "IVF_HNSW_SQ"]
            args += ["--num-partitions", "2", "--brute-force-rows", "0", "--json"]
            child = start_child(mvclam_command(*args), logs / f"index{len(runs)}.log")
            rc = _wait(child)
            report = child.json_output() or {}
            runs.append(
                {
                    "rc": rc,
                    "action": report.get("action"),
                    "compaction_deferred": report.get("compaction_deferred"),
                    "error": _error_line(child) if rc else "",
                }
            )
            time.sleep(index_pause_s)
        writers["index"] = runs

    readers = [threading.Thread(target=api_reader)]
    readers += [threading.Thread(target=http_reader, args=(i,)) for i in range(http_clients)]
    jobs = [threading.Thread(target=embedder)]
    if caption:
        jobs.append(threading.Thread(target=captioner))
    index_thread = threading.Thread(target=indexer) if index else None
    started = time.monotonic()
    try:
        for t in readers:
            t.start()
        for t in jobs:
            t.start()
        if index_thread:
            index_thread.start()
        for t in jobs:
            t.join()
        writers_done.set()
        if index_thread:
            index_thread.join()
        time.sleep(6)  # readers go on past the last commit (the service refreshes every 5 s)
    finally:
        stop.set()
        for t in readers:
            t.join(timeout=600)
        alive = server.alive()
        server.stop()
    figures["seconds"] = round(time.monotonic() - started, 1)
    figures["readers"] = {name: dict(c) for name, c in counts.items()}
    figures["queries"] = sum(c["queries"] for c in counts.values())
    figures["errors"] = sum(c["errors"] for c in counts.values())
    figures["mixed_versions"] = sum(c["mixed_versions"] for c in counts.values())
    figures["duplicate_hits"] = sum(c["duplicate_hits"] for c in counts.values())
    figures["error_examples"] = {k: v[:3] for k, v in errors.items()}
    figures["writers"] = writers
    figures["server_up"] = alive
    state = table_state(db)
    figures["final"] = {
        "rows": state.rows,
        "expected_rows": base + append + other,
        "duplicate_rows": state.duplicate_rows,
        "error_rows": state.error_rows,
    }
    if caption:
        from rel_common import read_table

        data = read_table(
            db, "molecules", ["id", "inchikey", "caption_inchikey", "caption_model_version"]
        ).to_pylist()
        figures["final"]["captioned"] = sum(r["caption_model_version"] is not None for r in data)
        figures["final"]["caption_for_another_molecule"] = sum(
            r["caption_model_version"] is not None and r["caption_inchikey"] != r["inchikey"] for r in data
        )
    return figures


SLOW_HEAD = "C1" + "C" * 198 + "1"  # a 200-atom ring: seconds of ETKDG


def two_jobs(workdir: Path, molecules: int, model: str, slow_head: int = 2) -> dict[str, Any]:
    """Two `mvclam embed` runs of one catalog into one table, started at the same moment. The
    catalog starts with `slow_head` slow molecules, so neither job commits before both have read
    which ids are done (what happens whenever two runs overlap, here made certain)."""
    import csv

    db = workdir / "two_jobs_db"
    shutil.rmtree(db, ignore_errors=True)
    checkpoint = resolve_model(model, workdir)
    body = write_catalog(workdir / "two_jobs_body.csv", molecules, bad_every=25)
    catalog = workdir / "two_jobs.csv"
    with open(body, newline="") as source, open(catalog, "w", newline="") as target:
        rows = list(csv.reader(source))
        writer = csv.writer(target)
        writer.writerow(rows[0])
        writer.writerows([f"slow-{i}", SLOW_HEAD] for i in range(slow_head))
        writer.writerows(rows[1:])
    bad = sum(1 for i in range(molecules) if i % 25 == 24)
    molecules += slow_head
    logs = workdir / "logs"
    args = embed_args([catalog], db, checkpoint, commit_rows=4, views_batch_size=4, batch_size=4)
    # Started together, as two schedulers (or a user and a cron job) would: both are past their
    # start-up and writing while the other writes.
    first = start_child(mvclam_command(*args), logs / "two_jobs_1.log")
    second = start_child(mvclam_command(*args), logs / "two_jobs_2.log")
    rcs = [_wait(first), _wait(second)]
    state = table_state(db)
    expected = (molecules - bad, bad)
    exact = (state.rows, state.error_rows) == expected and state.duplicate_rows == 0
    refused = [
        i
        for i, (rc, child) in enumerate(zip(rcs, (first, second), strict=True))
        if rc != 0 and _error_line(child)
    ]
    if rcs == [0, 0] and exact:
        outcome = "both succeeded with exact counts"
    elif len(refused) == 1 and exact and rcs[1 - refused[0]] == 0:
        outcome = "one refused: " + _error_line((first, second)[refused[0]])
    elif rcs == [0, 0]:
        outcome = "both succeeded, table wrong"
    else:
        outcome = "failed otherwise"
    return {
        "molecules": molecules,
        "rcs": rcs,
        "rows": state.rows,
        "distinct_ids": state.distinct_ids,
        "error_rows": state.error_rows,
        "expected_rows": list(expected),
        "duplicate_rows": state.duplicate_rows,
        "ids_in_both_tables": state.in_both,
        "exact": exact,
        "outcome": outcome,
        "errors": [_error_line(c) for c in (first, second)],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--base", type=int, default=400)
    parser.add_argument("--append", type=int, default=400)
    parser.add_argument("--other", type=int, default=200)
    parser.add_argument("--http-clients", type=int, default=2)
    parser.add_argument(
        "--caption-rows", type=int, default=64, help="rows the concurrent caption job captions"
    )
    parser.add_argument("--two-jobs-molecules", type=int, default=400)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    figures = {
        "readers": readers_during_writes(
            workdir,
            args.base,
            args.append,
            args.other,
            args.model,
            args.http_clients,
            caption_rows=args.caption_rows,
        ),
        "two_jobs": two_jobs(workdir, args.two_jobs_molecules, args.model),
    }
    write_report(args.out, figures)
    return 0 if figures["readers"]["errors"] == 0 and figures["readers"]["mixed_versions"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
