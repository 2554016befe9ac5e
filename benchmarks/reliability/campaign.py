"""The whole reliability campaign (docs/reliability.md): items 1-6 at one scale, one report.

    python benchmarks/reliability/campaign.py --scale full --workdir /tmp/rel-campaign --out reports/reliability.json
    python benchmarks/reliability/campaign.py --scale ci --workdir /tmp/rel-ci      # the CI test's sizes
    python benchmarks/reliability/campaign.py --scale full --only hostile crashes      # some items

`--scale full` is the issue's campaign: 10,000 hostile rows per format, 10 SIGKILLs of a 2,000-
molecule embed (plus an encoder actor and a views worker kill, and two kills of a caption run),
readers during writes on a 2,500-row table, 32 HTTP clients for 60 s. `--scale ci` runs the same
code at the sizes of tests/test_reliability_suite.py. Writes the figures as JSON (`--out`) and
prints the figures table of docs/reliability.md as Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import rel_crashes
import rel_faults
import rel_hostile
import rel_http
import rel_readers
import rel_security

SCALES: dict[str, dict[str, dict[str, Any]]] = {
    "full": {
        "hostile": {"rows": 10_000, "mb_lines": 4, "heavy": 1, "broken_jobs": "each"},
        "crashes": {
            "molecules": 2000,
            "kills": 10,
            "actor_kills": 1,
            "worker_kills": 1,
            "caption_kill_count": 2,
            "caption_rows": 64,
            "commit_rows": 1024,
            "commit_seconds": 2,
            "batch_size": 12,
            "kill_mode": "mixed",
        },
        "readers": {
            "base": 1000,
            "append": 1000,
            "other": 500,
            "caption_rows": 64,
            "two_jobs_molecules": 1000,
        },
        "http": {
            "clients": 32,
            "seconds": 60,
            "molecules": 300,
            "slow_concurrent": 16,
            "loris_sockets": 64,
            "smarts_length": 30,
        },
        "faults": {"molecules": 400},
    },
    # The bounded CI suite's sizes (tests/test_reliability_suite.py): cut to about 5 min on an
    # idle 2-core runner (docs/reliability.md, "CI size"). Every category of hostile input still
    # occurs once per format, and the HTTP load still fills the server's molecule slot.
    "ci": {
        "hostile": {"rows": 48, "mb_lines": 1, "heavy": 0, "broken_jobs": "one"},
        "crashes": {
            # Not cut: with fewer molecules or one kill, the kill often lands after the last
            # commit (the encoder's batches reach the writer in bursts), testing nothing.
            "molecules": 64,
            "kills": 2,
            "actor_kills": 1,
            "worker_kills": 0,
            "caption_kill_count": 1,
            # 12, not fewer: a short run's caption batches can all reach the writer at once, and
            # the kill then lands after the last commit.
            "caption_rows": 12,
            "caption_commit_rows": 2,
            "commit_rows": 4,
            "kill_mode": "progress",
            "caption_compare": False,
            "views_workers": 1,
        },
        "readers": {
            "base": 32,
            "append": 24,
            "other": 16,
            "caption_rows": 6,
            "http_clients": 1,
            "reader_pause_s": 0.25,  # the readers and index builds leave the writers CPU
            "index_pause_s": 4.0,
            "two_jobs_molecules": 60,
        },
        "http": {
            "clients": 4,
            "seconds": 5,
            "molecules": 24,
            "slow_concurrent": 3,
            "loris_sockets": 8,
            "smarts_length": 24,
            "molecule_wait_s": 2,
        },
        "faults": {"molecules": 48},
    },
}
ITEMS = ("security", "hostile", "crashes", "readers", "http", "faults")


def run_item(item: str, workdir: Path, settings: dict[str, Any], model: str) -> dict[str, Any]:
    target = workdir / item
    target.mkdir(parents=True, exist_ok=True)
    if item == "security":
        return rel_security.run()
    if item == "hostile":
        return rel_hostile.run(target, model=model, **settings)
    if item == "crashes":
        return rel_crashes.run(target, model=model, **settings)
    if item == "readers":
        s = dict(settings)
        two = s.pop("two_jobs_molecules")
        return {
            "readers": rel_readers.readers_during_writes(target, model=model, **s),
            "two_jobs": rel_readers.two_jobs(target, two, model),
        }
    if item == "http":
        return rel_http.run(target, model=model, **settings)
    if item == "faults":
        return rel_faults.run(target, model=model, **settings)
    raise ValueError(item)


def _get(data: dict[str, Any], path: str) -> Any:
    """`a.b.0.c`: keys of dicts, indices of lists; None where the path does not exist."""
    node: Any = data
    for part in path.split("."):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return None
    return node


# (item, figure, JSON path, what it must be)
TABLE = (
    ("1 hostile", "rows tried", "hostile.rows_tried", ""),
    ("1 hostile", "hostile rows", "hostile.hostile_rows", ">= 10,000 per format"),
    ("1 hostile", "crashes of the job", "hostile.crashes", "0"),
    ("1 hostile", "files whose rows are outside the generator's bounds", "hostile.files_out_of_bounds", "[]"),
    ("1 hostile", "rows neither embedded nor in the errors table", "hostile.tables.rows_lost", "0"),
    ("1 hostile", "ids in both tables", "hostile.tables.ids_in_both_tables", "0"),
    ("1 hostile", "duplicated ids after a re-run", "hostile.rerun.duplicate_rows", "0"),
    ("1 hostile", "rows re-done by the re-run", "hostile.rerun.embedded", "0"),
    ("1 hostile", "generator ids missing", "hostile.manifest.ids_missing", "0"),
    ("1 hostile", "good molecules not embedded", "hostile.manifest.good_not_embedded", "0"),
    ("1 hostile", "garbage after a SMILES embedded as a molecule", "hostile.manifest.garbage_embedded", "0"),
    ("1 hostile", "error codes", "hostile.tables.error_codes", ""),
    ("1 hostile", "broken files without a clear outcome", "hostile.unclear_broken_files", "[]"),
    ("2 crashes", "SIGKILLs of the driver's process group", "crashes.group_kills", ">= 10"),
    ("2 crashes", "committed rows lost by a kill", "crashes.rows_lost_by_kills", "0"),
    ("2 crashes", "processes left 10 s after a group kill", "crashes.processes_left_by_group_kills", "0"),
    ("2 crashes", "rows / clean run", "crashes.comparison.rows", "= clean"),
    ("2 crashes", "clean run rows", "crashes.comparison.clean_rows", ""),
    ("2 crashes", "duplicated ids", "crashes.comparison.duplicate_ids", "0"),
    (
        "2 crashes",
        "token rows not bit-identical to the clean run",
        "crashes.comparison.token_rows_differing",
        "0",
    ),
    ("2 crashes", "largest token difference", "crashes.comparison.token_max_abs_diff", "0.0"),
    ("2 crashes", "encoder actor kill: run exit status", "crashes.actor_kills.0.rc", ""),
    ("2 crashes", "after actor kill: same rows as clean", "crashes.actor_comparison.same_ids", "true"),
    ("2 crashes", "views worker kill: killed", "crashes.actor_kills.1.killed", "true"),
    (
        "2 crashes",
        "after worker kill: same rows as clean",
        "crashes.actor_kills.1.comparison.same_ids",
        "true",
    ),
    ("2 crashes", "caption rows after kills / rows", "crashes.captions.captioned", "= rows"),
    ("2 crashes", "captions for another molecule", "crashes.captions.captions_for_another_molecule", "0"),
    ("3 readers", "queries", "readers.readers.queries", ""),
    ("3 readers", "reader errors", "readers.readers.errors", "0"),
    ("3 readers", "results mixing model versions", "readers.readers.mixed_versions", "0"),
    ("3 readers", "final rows / expected", "readers.readers.final.rows", "= expected"),
    ("3 readers", "writers", "readers.readers.writers", "rc 0"),
    ("3 readers", "two embed jobs at once", "readers.two_jobs.outcome", "exact or refused"),
    ("3 readers", "two jobs: duplicated rows", "readers.two_jobs.duplicate_rows", "0"),
    ("4 HTTP", "requests", "http.load.requests", ""),
    ("4 HTTP", "5xx under load", "http.load.5xx", "0"),
    ("4 HTTP", "p50 / p95 ms", "http.load.p50_ms", ""),
    ("4 HTTP", "p95 ms", "http.load.p95_ms", ""),
    ("4 HTTP", "RSS before / after MB", "http.load.rss_before_mb", ""),
    ("4 HTTP", "RSS after MB", "http.load.rss_after_mb", ""),
    ("4 HTTP", "hostile requests not answered 4xx JSON", "http.hostile.not_4xx_json", "0"),
    ("4 HTTP", "slow molecule requests: 5xx", "http.slow_molecules.5xx", "0"),
    ("4 HTTP", "pathological SMARTS: seconds", "http.pathological_smarts.seconds", "bounded"),
    ("4 HTTP", "plain search during it: seconds", "http.pathological_smarts.search_meanwhile_s", "bounded"),
    ("4 HTTP", "server up at the end", "http.server_up", "true"),
    ("5 faults", "read-only: clear errors, table unchanged", "faults.read_only.unchanged", "true"),
    ("5 faults", "full disk: committed rows kept", "faults.full_disk.committed_rows_kept", "true"),
    ("5 faults", "full disk: exact after resume", "faults.full_disk.exact_after_resume", "true"),
    (
        "5 faults",
        "damaged data file: rows back by restore",
        "faults.damaged_data.committed_rows_kept",
        "true",
    ),
    ("5 faults", "damaged manifest: rows back", "faults.damaged_manifest.committed_rows_kept", "true"),
    ("5 faults", "damaged table: clear error", "faults.damaged_data.clear_errors", "true"),
    ("5 faults", "damaged table: HTTP status", "faults.damaged_data.http.status", "5xx"),
    ("6 security", "static findings", "security.static.findings", "[]"),
    ("6 security", "default bind address", "security.service.serve_default_host", "127.0.0.1"),
    ("6 security", "CORS", "security.service.cors", "false"),
    (
        "6 security",
        "client fields taking SQL/paths/embeddings",
        "security.service.forbidden_request_fields",
        "{}",
    ),
)


def markdown(report: dict[str, Any], command: str) -> str:
    lines = [f"Command: `{command}`", "", "| item | figure | value | must be |", "|---|---|---|---|"]
    for item, figure, path, must in TABLE:
        value = _get(report, path)
        if value is None:
            continue
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        lines.append(f"| {item} | {figure} | {text[:200]} | {must} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", choices=sorted(SCALES), default="full")
    parser.add_argument("--workdir", required=True)
    parser.add_argument(
        "--model", default="tiny", help="tiny (random, fast) | shipped | checkpoint directory"
    )
    parser.add_argument("--only", nargs="*", choices=ITEMS, default=list(ITEMS))
    parser.add_argument("--out", default=None, help="JSON report")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    report: dict[str, Any] = {
        "scale": args.scale,
        "model": args.model,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "python": sys.version.split()[0],
        "seconds": {},
    }
    for item in args.only:
        started = time.perf_counter()
        print(f"[campaign] {item} ...", file=sys.stderr, flush=True)
        try:
            report[item] = run_item(item, workdir, SCALES[args.scale].get(item, {}), args.model)
        except Exception as error:  # one item failing must not lose the others' figures
            report[item] = {"campaign_error": f"{type(error).__name__}: {error}"[:2000]}
        report["seconds"][item] = round(time.perf_counter() - started, 1)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(report, indent=1, default=str))
    print(markdown(report, " ".join(["python", *sys.argv])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
