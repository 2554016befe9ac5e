"""Item 2, crashes: SIGKILLs at random moments of an embed and of a caption run, then resume.

    python benchmarks/reliability/rel_crashes.py --molecules 2000 --kills 10 --workdir /tmp/rel-crash \
        [--actor-kills 1 --worker-kills 1 --caption-kills 2 --caption-rows 64] [--out crashes.json]

Each run is a `mvclam embed` driver process in its own session (a private local Ray, as a user
runs it). A clean run on its own database is the reference. Then, on a second database: runs
whose encoder actor (or one views worker) is SIGKILLed, then runs whose whole process group is
SIGKILLed at random moments (uniform over the clean run's start-up and remaining work), each
resuming the one before, and a last run to completion. Then `mvclam caption` runs on a small copy
are killed and resumed. Figures: rows after each kill (never fewer than before: committed rows
are kept), processes left behind by a group kill, exact row counts against the clean run, 0
duplicated ids, stored tokens equal to the clean run's (bit-identical rows, largest difference),
caption rows consistent (every row captioned once, for the molecule it holds, by one version).
"""

from __future__ import annotations

import argparse
import random
import shutil
import time
from pathlib import Path
from typing import Any

from rel_common import (
    Child,
    embed_args,
    find_descendant,
    kill_child_tree,
    kill_group,
    mvclam_command,
    resolve_model,
    start_child,
    table_state,
    write_catalog,
    write_report,
)


def _rows(db: Path) -> int:
    try:
        return table_state(db).rows
    except Exception:
        return -1


def _version(db: Path) -> int:
    """How many versions of the embeddings table exist (0: none yet); cheap to poll."""
    versions = db / "molecules.lance" / "_versions"
    try:
        return sum(1 for name in versions.iterdir() if name.suffix == ".manifest")
    except OSError:
        return 0


def _embed(catalog: Path, db: Path, model: str | None, log: Path, settings: dict[str, Any]) -> Child:
    return start_child(mvclam_command(*embed_args([catalog], db, model, **settings)), log)


def clean_run(
    catalog: Path, db: Path, model: str | None, logs: Path, settings: dict[str, Any]
) -> dict[str, Any]:
    """The reference run; also measures start-up (until the first commit) and the whole run."""
    child = _embed(catalog, db, model, logs / "clean.log", settings)
    first_commit = None
    while child.popen.poll() is None:
        if first_commit is None and (db / "molecules.lance").exists() and _rows(db) > 0:
            first_commit = time.monotonic() - child.started
        time.sleep(0.25)
    wall = time.monotonic() - child.started
    if child.popen.returncode != 0:
        raise RuntimeError(f"the clean run failed: {child.output()[-2000:]}")
    return {
        "wall_s": round(wall, 1),
        "startup_s": round(first_commit or wall, 1),
        "summary": child.json_output(),
    }


def kill_actor_run(
    catalog: Path, db: Path, model: str | None, logs: Path, settings: dict[str, Any], needle: str, name: str
) -> dict[str, Any]:
    """A run whose `needle` process (the encoder actor or a views worker) is SIGKILLed once rows
    are being committed; the driver is left to finish or fail on its own."""
    rows_before = _rows(db)
    child = _embed(catalog, db, model, logs / f"{name}.log", settings)
    victim = None
    deadline = time.monotonic() + 600
    while child.popen.poll() is None and time.monotonic() < deadline:
        if _rows(db) > max(rows_before, 0):
            victim = find_descendant(child, needle)
            if victim is not None:
                break
        time.sleep(0.1)
    outcome: dict[str, Any] = {"target": needle, "rows_before": rows_before}
    if victim is None:
        outcome["killed"] = False
        child.wait(1200)
    else:
        victim.kill()
        outcome["killed"] = True
        try:
            child.wait(1200)
        except Exception:
            kill_child_tree(child)
    outcome["rc"] = child.popen.returncode
    outcome["rows_after"] = _rows(db)
    state = table_state(db)
    outcome["duplicate_rows"] = state.duplicate_rows
    if child.popen.returncode != 0:
        lines = [line for line in child.output().splitlines() if "Error" in line]
        outcome["error"] = lines[-1][:300] if lines else child.output()[-300:]
    return outcome


def kill_driver_runs(
    catalog: Path,
    db: Path,
    model: str | None,
    logs: Path,
    settings: dict[str, Any],
    kills: int,
    startup_s: float,
    work_s: float,
    total_rows: int,
    rng: random.Random,
    mode: str = "mixed",
) -> list[dict[str, Any]]:
    """`kills` runs SIGKILLed (whole process group), each resuming the last. Moments: "uniform"
    over the expected run (start-up included, so many kills land before the first commit),
    "progress" after the run's first new commit plus a random part of the work left, "mixed"
    alternates the two."""
    outcomes: list[dict[str, Any]] = []
    attempts = 0
    high_water = max(_rows(db), 0)
    while sum(o["killed"] for o in outcomes) < kills and attempts < 3 * kills:
        attempts += 1
        state = table_state(db) if (db / "molecules.lance").exists() else None
        done = state.rows + state.error_rows if state else 0
        remaining = max(0.0, 1 - done / max(total_rows, 1))
        moment = mode if mode != "mixed" else ("uniform" if attempts % 2 else "progress")
        child = _embed(catalog, db, model, logs / f"kill{attempts}.log", settings)
        if moment == "uniform":
            delay = rng.uniform(0.2 * startup_s, startup_s + 0.95 * remaining * work_s)
        else:
            start_version = _version(db)
            while (
                child.popen.poll() is None
                and _version(db) <= max(start_version, 1)  # version 1: the new, empty table
                and time.monotonic() - child.started < 600
            ):
                time.sleep(0.02)
            delay = time.monotonic() - child.started + rng.uniform(0, 0.3 * remaining * work_s)
        while child.popen.poll() is None and time.monotonic() - child.started < delay:
            time.sleep(0.05)
        outcome: dict[str, Any] = {"moment": moment, "delay_s": round(delay, 2), "rows_before": high_water}
        if child.popen.poll() is None:
            outcome.update(kill_group(child))
            outcome["killed"] = True
        else:
            outcome["killed"] = False
            outcome["rc"] = child.popen.returncode
        try:
            state = table_state(db)
            outcome.update(
                rows_after=state.rows, error_rows=state.error_rows, duplicate_rows=state.duplicate_rows
            )
            outcome["rows_lost"] = max(0, high_water - state.rows)
            high_water = max(high_water, state.rows)
        except Exception as error:  # the table must stay readable after any kill
            outcome["unreadable"] = f"{type(error).__name__}: {error}"[:300]
        outcomes.append(outcome)
    return outcomes


def compare_tables(db: Path, reference: Path) -> dict[str, Any]:
    """Rows, errors and stored vectors of `db` against the clean run's `reference`."""
    import numpy as np
    from rel_common import read_table

    def load(path: Path):
        table = read_table(path, "molecules", ["id", "tokens", "pooled"]).sort_by("id")
        errors = read_table(path, "molecules_errors", ["id", "error_code"]).sort_by("id")
        return table, errors

    got, got_errors = load(db)
    want, want_errors = load(reference)
    figures: dict[str, Any] = {
        "rows": got.num_rows,
        "clean_rows": want.num_rows,
        "error_rows": got_errors.num_rows,
        "clean_error_rows": want_errors.num_rows,
        "same_ids": got["id"].to_pylist() == want["id"].to_pylist(),
        "same_errors": got_errors.to_pylist() == want_errors.to_pylist(),
        "duplicate_ids": got.num_rows - len(set(got["id"].to_pylist())),
    }
    if figures["same_ids"] and got.num_rows:
        a = np.stack([np.stack(r) for r in got["tokens"].to_numpy(zero_copy_only=False)])
        b = np.stack([np.stack(r) for r in want["tokens"].to_numpy(zero_copy_only=False)])
        differ = np.any(a.reshape(len(a), -1) != b.reshape(len(b), -1), axis=1)
        figures["token_rows_bit_identical"] = int((~differ).sum())
        figures["token_rows_differing"] = int(differ.sum())
        figures["token_max_abs_diff"] = float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())
        pa_, pb = (np.stack(t["pooled"].to_numpy(zero_copy_only=False)) for t in (got, want))
        figures["pooled_max_abs_diff"] = float(np.abs(pa_.astype(np.float64) - pb.astype(np.float64)).max())
    return figures


def _caption_child(db: Path, model: str | None, log: Path, settings: dict[str, Any]) -> Child:
    args = ["caption", "--db", str(db), "--table", "molecules", "--json"]
    args += ["--commit-rows", str(settings["commit_rows"]), "--batch-size", str(settings["batch_size"])]
    args += ["--max-new-tokens", str(settings["max_new_tokens"]), "--threads", "1"]
    if model:
        args += ["--model", model]
    return start_child(mvclam_command(*args), log)


def _captioned(db: Path) -> int:
    import lancedb

    try:
        table = lancedb.connect(str(db)).open_table("molecules")
        if "caption_model_version" not in table.schema.names:
            return 0
        return table.count_rows("caption_model_version IS NOT NULL")
    except Exception:
        return -1


def caption_state(db: Path) -> dict[str, Any]:
    from rel_common import read_table

    data = read_table(db, "molecules").to_pylist()
    versions = {r.get("caption_model_version") for r in data}
    return {
        "rows": len(data),
        "distinct_ids": len({r["id"] for r in data}),
        "captioned": sum(r.get("caption_model_version") is not None for r in data),
        "caption_versions": sorted(v for v in versions if v),
        "wrong_molecule": sum(
            r.get("caption_model_version") is not None and r.get("caption_inchikey") != r["inchikey"]
            for r in data
        ),
        "captions": {r["id"]: (r.get("caption"), r.get("caption_error")) for r in data},
    }


def caption_kills(
    source_db: Path,
    workdir: Path,
    model: str | None,
    rows: int,
    kills: int,
    settings: dict[str, Any],
    rng: random.Random,
    compare: bool = True,
) -> dict[str, Any]:
    """A killed-and-resumed caption run (and, with `compare`, a clean one) on copies of the first
    `rows` rows of `source_db`."""
    import lancedb

    copies = {}
    for name in ("caption_clean", "caption_killed") if compare else ("caption_killed",):
        target = workdir / name
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source_db, target)
        table = lancedb.connect(str(target)).open_table("molecules")
        keep = sorted(table.to_lance().to_table(columns=["id"])["id"].to_pylist())[:rows]
        if len(keep) < table.count_rows():
            table.delete(f"id > '{keep[-1]}'")
        copies[name] = target
    logs = workdir / "logs"
    clean_wall = clean_work = 0.0
    if compare:
        clean = _caption_child(copies["caption_clean"], model, logs / "caption_clean.log", settings)
        first = None
        while clean.popen.poll() is None:
            if first is None and _captioned(copies["caption_clean"]) > 0:
                first = time.monotonic() - clean.started
            time.sleep(0.1)
        clean_wall = time.monotonic() - clean.started
        clean_work = clean_wall - (first or clean_wall)
        if clean.popen.returncode != 0:
            raise RuntimeError(f"clean caption run failed: {clean.output()[-2000:]}")
    outcomes = []
    db = copies["caption_killed"]
    for i in range(kills):
        child = _caption_child(db, model, logs / f"caption_kill{i}.log", settings)
        before = max(_captioned(db), 0)
        # Kill once it has committed captions (not just added the caption columns), after a random
        # part of the work left (estimated from the clean run; without one, at once).
        while child.popen.poll() is None and _captioned(db) <= before:
            time.sleep(0.05)
        time.sleep(rng.uniform(0, 0.5) * clean_work * max(0.0, 1 - before / max(rows, 1)))
        outcome: dict[str, Any] = {"captioned_before": before}
        if child.popen.poll() is None:
            outcome.update(kill_group(child))
            outcome["killed"] = True
        else:
            outcome["killed"] = False
        outcome["captioned_after"] = _captioned(db)
        outcomes.append(outcome)
    final = _caption_child(db, model, logs / "caption_final.log", settings)
    final.wait(3600)
    killed_state = caption_state(db)
    figures: dict[str, Any] = {
        "kills_mid_run": sum(o["killed"] and 0 <= o["captioned_after"] < rows for o in outcomes)
    }
    if compare:
        clean_state = caption_state(copies["caption_clean"])
        figures["captions_equal_to_clean_run"] = sum(
            killed_state["captions"].get(i) == c for i, c in clean_state["captions"].items()
        )
        figures["clean_captioned"] = clean_state["captioned"]
    return {
        **figures,
        "rows": rows,
        "kills": outcomes,
        "final_rc": final.popen.returncode,
        "clean_wall_s": round(clean_wall, 1),
        "rows_after": killed_state["rows"],
        "distinct_ids": killed_state["distinct_ids"],
        "captioned": killed_state["captioned"],
        "caption_versions": killed_state["caption_versions"],
        "captions_for_another_molecule": killed_state["wrong_molecule"],
    }


def run(
    workdir: str | Path,
    molecules: int = 2000,
    kills: int = 10,
    actor_kills: int = 1,
    worker_kills: int = 1,
    caption_kill_count: int = 1,
    caption_rows: int = 64,
    model: str = "tiny",
    seed: int = 0,
    commit_rows: int = 16,
    max_new_tokens: int = 4,
    kill_mode: str = "mixed",
    caption_compare: bool = True,
    views_workers: int = 0,
    commit_seconds: float = 0,
    batch_size: int | None = None,
    caption_commit_rows: int = 4,
) -> dict[str, Any]:
    """`commit_rows` rows per commit and per views block; `commit_seconds` > 0 with a large
    `commit_rows` commits by time instead (as the job's defaults do), so a resume's batches do not
    line up with the clean run's; `batch_size`: encoder batch (default: the views block)."""
    workdir = Path(workdir)
    for name in ("clean", "killed", "actor_killed", "caption_clean", "caption_killed"):
        shutil.rmtree(workdir / name, ignore_errors=True)
    rng = random.Random(seed)
    checkpoint = resolve_model(model, workdir, seed, captioner=caption_kill_count > 0)
    catalog = write_catalog(workdir / "catalog.csv", molecules, bad_every=25)
    logs = workdir / "logs"
    block = commit_rows if not commit_seconds else min(commit_rows, 16)
    settings: dict[str, Any] = {
        "commit_rows": commit_rows,
        "views_batch_size": block,
        "batch_size": batch_size or block,
        "commit_seconds": commit_seconds,
    }
    if views_workers:
        settings["extra"] = ["--views-workers", str(views_workers)]
    figures: dict[str, Any] = {
        "molecules": molecules,
        "settings": settings,
        "views_workers": views_workers,
    }
    figures["clean"] = clean = clean_run(catalog, workdir / "clean", checkpoint, logs, settings)
    work_s = max(1.0, clean["wall_s"] - clean["startup_s"])

    # Driver process-group kills, each resuming the last, then a run to completion.
    db = workdir / "killed"
    figures["driver_kills"] = kill_driver_runs(
        catalog, db, checkpoint, logs, settings, kills, clean["startup_s"], work_s, molecules, rng, kill_mode
    )
    final = _embed(catalog, db, checkpoint, logs / "final.log", settings)
    final.wait(3600)
    figures["final_rc"] = final.popen.returncode
    figures["final_summary"] = final.json_output()
    figures["comparison"] = compare_tables(db, workdir / "clean")
    kills_done = [o for o in figures["driver_kills"] if o["killed"]]
    figures["group_kills"] = len(kills_done)
    figures["rows_lost_by_kills"] = sum(o.get("rows_lost", 0) for o in kills_done)
    figures["unreadable_after_kill"] = sum("unreadable" in o for o in figures["driver_kills"])
    figures["processes_left_by_group_kills"] = sum(o.get("left_after_group_kill", 0) for o in kills_done)
    clean_rows = figures["comparison"]["clean_rows"]
    figures["kills_mid_run"] = sum(0 < o.get("rows_after", 0) < clean_rows for o in kills_done)

    # Encoder actor and views worker kills, each on its own empty database: a second kill on the
    # first one's finished table would find no row left to embed and kill nothing.
    if actor_kills or worker_kills:
        runs = [("EncoderActor", f"actor{i}") for i in range(actor_kills)]
        runs += [("compute_view_rows", f"worker{i}") for i in range(worker_kills)]
        clean_state = table_state(workdir / "clean")
        figures["actor_kills"] = []
        for needle, name in runs:
            adb = workdir / f"{name}_killed"
            shutil.rmtree(adb, ignore_errors=True)
            outcome = kill_actor_run(catalog, adb, checkpoint, logs, settings, needle, name)
            outcome["final_rc"] = None  # no resume needed: the killed run finished the table
            state = table_state(adb)
            if outcome["rc"] != 0 or (state.rows, state.error_rows) != (
                clean_state.rows,
                clean_state.error_rows,
            ):
                resume = _embed(catalog, adb, checkpoint, logs / f"{name}_final.log", settings)
                resume.wait(3600)
                outcome["final_rc"] = resume.popen.returncode
            outcome["comparison"] = compare_tables(adb, workdir / "clean")
            figures["actor_kills"].append(outcome)
        resumed = [o["final_rc"] for o in figures["actor_kills"] if o["final_rc"] is not None]
        figures["actor_final_rc"] = max(resumed, key=abs) if resumed else None
        figures["actor_comparison"] = figures["actor_kills"][0]["comparison"]
    if caption_kill_count:
        figures["captions"] = caption_kills(
            workdir / "clean",
            workdir,
            checkpoint,
            min(caption_rows, molecules),
            caption_kill_count,
            {
                "commit_rows": caption_commit_rows,
                "batch_size": caption_commit_rows,
                "max_new_tokens": max_new_tokens,
            },
            rng,
            caption_compare,
        )
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--molecules", type=int, default=2000)
    parser.add_argument("--kills", type=int, default=10, help="SIGKILLs of the driver's process group")
    parser.add_argument("--actor-kills", type=int, default=1)
    parser.add_argument("--worker-kills", type=int, default=1)
    parser.add_argument("--caption-kills", type=int, default=2)
    parser.add_argument("--caption-rows", type=int, default=64)
    parser.add_argument("--commit-rows", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=4)
    parser.add_argument(
        "--model", default="tiny", help="tiny | shipped | checkpoint directory (with a captioner)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kill-mode", choices=("uniform", "progress", "mixed"), default="mixed")
    parser.add_argument("--no-caption-compare", dest="caption_compare", action="store_false")
    parser.add_argument(
        "--views-workers", type=int, default=0, help="cap on views tasks (0: the job default)"
    )
    parser.add_argument(
        "--commit-seconds", type=float, default=0, help="commit by time (with a large --commit-rows)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="encoder batch (default: the views block)"
    )
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    figures = run(
        args.workdir,
        args.molecules,
        args.kills,
        args.actor_kills,
        args.worker_kills,
        args.caption_kills,
        args.caption_rows,
        args.model,
        args.seed,
        args.commit_rows,
        args.max_new_tokens,
        args.kill_mode,
        args.caption_compare,
        args.views_workers,
        args.commit_seconds,
        args.batch_size,
    )
    write_report(args.out, figures)
    c = figures["comparison"]
    ok = c["same_ids"] and c["same_errors"] and c["duplicate_ids"] == 0 and figures["rows_lost_by_kills"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
