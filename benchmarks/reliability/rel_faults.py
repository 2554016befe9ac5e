"""Item 5, faults: a read-only database, a full disk, a table whose latest version was damaged.

    python benchmarks/reliability/rel_faults.py --workdir /tmp/rel-faults --molecules 400 [--out faults.json]

One base database (the first half of a catalog, committed in several versions) is copied for each
fault; every embed runs in this process (`run_embed` on a local Ray).

* read-only: as a normal user `chmod -R a-w`; as root (chmod does not stop root) a read-only bind
  mount of the copy (needs CAP_SYS_ADMIN; otherwise skipped with the reason). An embed into it
  and one into a new table must fail with an error that says so; the table is unchanged and a
  searcher still answers from it.
* full disk: the copy on a small tmpfs mount, filled up to a few KB less than the rest of the
  catalog needs: the embed must fail with an error that says so, keep every row committed
  before, and, once space is freed, resume to exact counts.
* damaged latest version: (a) a data file written by the latest commit is cut in half, (b) the
  latest manifest is overwritten. The error an embed, a searcher and the HTTP API give is
  recorded; then the table is brought back (a: `table.restore(previous version)`, b: the damaged
  manifest moved aside) with every row of the earlier version, and a resumed embed completes.

A "clear" error names the fault (read-only, no space, damaged or corrupt) without Rust source
paths; figures record each message.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import stat
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from rel_common import (
    can_mount,
    internal_leak,
    is_root,
    resolve_model,
    table_state,
    write_catalog,
    write_report,
)


def _embed(inputs: list[Path], db: Path, model: str | None, **values: Any):
    from mvclam.jobs.embed import load_embed_job, run_embed

    settings = dict(
        inputs=[str(p) for p in inputs],
        db=str(db),
        model=model,
        views_batch_size=8,
        encoder_batch_size=8,
        commit_rows=8,
        commit_seconds=0,
        optimize=False,
        progress=False,
    )
    settings.update(values)
    return run_embed(load_embed_job(None, **settings))


def _attempt(fn, *args: Any, **kwargs: Any) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        result = fn(*args, **kwargs)
    except Exception as error:
        text = str(error)
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        message = next(
            (line for line in lines if "Error" in line or "error" in line), lines[0] if lines else ""
        )
        return {
            "failed": True,
            "type": type(error).__name__,
            "message": message[:400],
            "seconds": round(time.perf_counter() - started, 1),
            "reveals_internals": internal_leak(text) is not None,
        }
    return {"failed": False, "result": result, "seconds": round(time.perf_counter() - started, 1)}


def _says(outcome: dict[str, Any], *words: str) -> bool:
    text = outcome.get("message", "").lower()
    return outcome.get("failed", False) and any(w.lower() in text for w in words)


def _ok(outcome: dict[str, Any]) -> dict[str, Any]:
    outcome = dict(outcome)
    result = outcome.pop("result", None)
    if result is not None and hasattr(result, "embedded"):
        outcome.update(embedded=result.embedded, failed_rows=result.failed, table_rows=result.table_rows)
    return outcome


def _search(db: Path, model: str | None) -> dict[str, Any]:
    from mvclam.engine.search import CatalogSearcher

    def go() -> int:
        return len(CatalogSearcher(db, "molecules", checkpoint=model).search_text("an aromatic acid", k=5))

    outcome = _attempt(go)
    if not outcome["failed"]:
        outcome["hits"] = outcome.pop("result")
    return outcome


@contextlib.contextmanager
def serving(db: Path, model: str | None):
    """`create_app` over `db` on a loopback port (uvicorn in a thread); yields a function that
    returns (status, detail) of one text search. The searcher is built here, before any damage,
    as in a long-running `mvclam serve`."""
    import http.client
    import json

    import uvicorn
    from rel_common import free_port

    from mvclam.engine.search import CatalogSearcher
    from mvclam.jobs.serve import create_app

    searcher = CatalogSearcher(db, "molecules", checkpoint=model, refresh_seconds=0)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(searcher), host="127.0.0.1", port=port, log_level="critical")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)

    def search() -> dict[str, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            body = json.dumps({"query": "an aromatic acid", "k": 5, "depict": False})
            conn.request("POST", "/api/search", body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        try:
            detail = json.loads(data).get("detail")
        except ValueError:
            detail = data[:200].decode("latin-1")
        return {"status": response.status, "detail": detail}

    try:
        yield search
    finally:
        server.should_exit = True
        thread.join(timeout=10)


# --- read-only --------------------------------------------------------------------------------


@contextlib.contextmanager
def read_only_view(db: Path, mount_point: Path):
    """`db` made read-only: (path to use, how). As root a read-only bind mount (chmod does not
    stop root); otherwise chmod. Yields (None, reason) when neither is possible."""
    if not is_root():
        modes = {}
        for path in [db, *db.rglob("*")]:
            modes[path] = path.stat().st_mode
            os.chmod(path, modes[path] & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
        try:
            yield db, "chmod -R a-w"
        finally:
            for path, mode in modes.items():
                os.chmod(path, mode)
        return
    if not can_mount():
        yield None, "root without CAP_SYS_ADMIN: chmod does not stop root and no read-only mount is possible"
        return
    mount_point.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "--bind", str(db), str(mount_point)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(mount_point)], check=True)
        yield mount_point, "read-only bind mount (root)"
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


def read_only(base: Path, workdir: Path, full: Path, model: str | None) -> dict[str, Any]:
    db = workdir / "ro_db"
    shutil.rmtree(db, ignore_errors=True)
    shutil.copytree(base, db)
    before = table_state(db)
    figures: dict[str, Any] = {}
    with read_only_view(db, workdir / "ro_mount") as (path, how):
        figures["how"] = how
        if path is None:
            figures["skipped"] = how
            return figures
        probe = path / "probe"
        try:
            probe.write_text("x")
            probe.unlink()
            figures["skipped"] = "the read-only view is writable"
            return figures
        except OSError:
            pass
        figures["embed"] = _ok(_attempt(_embed, [full], path, model))
        figures["embed_new_table"] = _ok(_attempt(_embed, [full], path, model, table="fresh"))
        figures["search"] = _search(path, model)
        after = table_state(path)
    figures["rows_before"], figures["rows_after"] = before.rows, after.rows
    figures["unchanged"] = (before.rows, before.error_rows, before.version) == (
        after.rows,
        after.error_rows,
        after.version,
    )
    figures["clear_errors"] = all(
        _says(figures[k], "read-only", "read only", "permission denied") for k in ("embed", "embed_new_table")
    )
    return figures


# --- full disk --------------------------------------------------------------------------------


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def full_disk(
    base: Path, workdir: Path, full: Path, model: str | None, expected: tuple[int, int]
) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    if not can_mount():
        figures["skipped"] = "needs root with CAP_SYS_ADMIN for a tmpfs mount"
        return figures
    mount = workdir / "full_mount"
    mount.mkdir(parents=True, exist_ok=True)
    size = max(8 * 2**20, 4 * _du(base))
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], check=True)
    try:
        db = mount / "db"
        shutil.copytree(base, db)
        before = table_state(db)
        per_row = _du(db) / max(1, before.rows + before.error_rows)
        rest = expected[0] + expected[1] - before.rows - before.error_rows
        free = os.statvfs(mount).f_bavail * os.statvfs(mount).f_frsize
        room = int(per_row * rest * 0.4)  # less than the rest of the catalog needs
        filler = mount / "filler"
        with open(filler, "wb") as handle:
            handle.truncate(0)
            chunk = b"\0" * 2**20
            left = max(0, free - room)
            while left > 0:
                handle.write(chunk[: min(len(chunk), left)])
                left -= min(len(chunk), left)
        figures["free_bytes_before_run"] = os.statvfs(mount).f_bavail * os.statvfs(mount).f_frsize
        figures["embed"] = _ok(_attempt(_embed, [full], db, model))
        state = _attempt(table_state, db)
        figures["readable_after"] = not state["failed"]
        if not state["failed"]:
            s = state["result"]
            figures.update(
                rows_before=before.rows,
                rows_after_failure=s.rows,
                duplicate_rows_after_failure=s.duplicate_rows,
                committed_rows_kept=s.rows >= before.rows,
            )
        filler.unlink()
        figures["resume"] = _ok(_attempt(_embed, [full], db, model))
        final = table_state(db)
        figures["final_rows"], figures["final_error_rows"] = final.rows, final.error_rows
        figures["final_duplicates"] = final.duplicate_rows
        figures["exact_after_resume"] = (
            final.rows,
            final.error_rows,
        ) == expected and final.duplicate_rows == 0
        figures["clear_error"] = _says(figures["embed"], "no space left", "disk full", "quota")
    finally:
        subprocess.run(["umount", str(mount)], check=False)
    return figures


# --- damaged latest version -------------------------------------------------------------------


def _versions(uri: str) -> dict[int, int]:
    import lance

    return {
        v["version"]: lance.dataset(uri, version=v["version"]).count_rows()
        for v in lance.dataset(uri).versions()
    }


def damaged(base: Path, workdir: Path, part: Path, model: str | None, mode: str) -> dict[str, Any]:
    import lancedb

    db = workdir / f"damaged_{mode}"
    shutil.rmtree(db, ignore_errors=True)
    shutil.copytree(base, db)
    uri = str(db / "molecules.lance")
    versions = _versions(uri)
    latest = max(versions)
    previous = max(v for v in versions if v < latest and versions[v] < versions[latest])
    figures: dict[str, Any] = {"mode": mode, "latest": latest, "restore_to": previous}
    figures["rows_latest"], figures["rows_previous"] = versions[latest], versions[previous]
    with serving(db, model) as http_search:
        figures["http_before"] = http_search()
        target = _damage(uri, mode, previous, latest, figures)
        figures["http"] = http_search()  # a running service meets the damage
    figures["embed"] = _ok(_attempt(_embed, [part], db, model))
    figures["search"] = _search(db, model)  # a searcher started after the damage
    # Recovery.
    if mode == "data":
        table = lancedb.connect(str(db)).open_table("molecules")
        table.restore(previous)
        figures["recovery"] = f"table.restore({previous})"
    else:
        quarantine = db / "quarantine"
        quarantine.mkdir()
        shutil.move(str(target), quarantine / target.name)
        figures["recovery"] = f"moved _versions/{target.name} aside (the table opens at version {previous})"
    table = lancedb.connect(str(db)).open_table("molecules")
    figures["rows_after_recovery"] = table.count_rows()
    figures["readable_after_recovery"] = table.to_lance().to_table(columns=["id", "tokens"]).num_rows
    figures["committed_rows_kept"] = figures["rows_after_recovery"] == versions[previous]
    figures["resume"] = _ok(_attempt(_embed, [part], db, model))
    final = table_state(db)
    figures["final_rows"], figures["final_duplicates"] = final.rows, final.duplicate_rows
    figures["clear_errors"] = all(
        _says(figures[k], "damaged", "corrupt", "restore") and not figures[k].get("reveals_internals")
        for k in ("embed", "search")
    )
    # A client of a running service must not be told its request was wrong (a 4xx) for a storage
    # fault, nor see internals.
    http = figures["http"]
    figures["http_clear"] = http["status"] >= 500 or (http["status"] == 200 and mode == "manifest")
    return figures


def _damage(uri: str, mode: str, previous: int, latest: int, figures: dict[str, Any]) -> Path:
    """Damages the latest version by hand: cuts a data file it added, or overwrites its manifest."""
    import lance

    if mode == "data":
        old = {f.data_files()[0].path for f in lance.dataset(uri, version=previous).get_fragments()}
        new = [
            f.data_files()[0].path
            for f in lance.dataset(uri).get_fragments()
            if f.data_files()[0].path not in old
        ]
        target = Path(uri) / "data" / new[0]
        data = target.read_bytes()
        target.write_bytes(data[: len(data) // 2])
        figures["damaged_file"] = f"data/{target.name} (cut from {len(data)} to {len(data) // 2} bytes)"
    else:
        manifests = sorted((Path(uri) / "_versions").glob("*.manifest"))
        target = next(m for m in manifests if _manifest_version(m) == latest)
        data = bytearray(target.read_bytes())
        middle = len(data) // 2
        data[middle : middle + 32] = os.urandom(32)
        target.write_bytes(bytes(data))
        figures["damaged_file"] = f"_versions/{target.name} (32 bytes overwritten)"
    return target


def _manifest_version(path: Path) -> int:
    stem = path.stem
    number = int(stem)
    # Lance's V2 naming stores u64::MAX - version; V1 stores the version itself.
    return (2**64 - 1) - number if number > 2**63 else number


def run(workdir: str | Path, molecules: int = 400, model: str = "tiny") -> dict[str, Any]:
    from rel_common import ray_session

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    checkpoint = resolve_model(model, workdir)
    full = write_catalog(workdir / "full.csv", molecules, bad_every=20)
    part = write_catalog(workdir / "part.csv", molecules // 2, bad_every=20)
    figures: dict[str, Any] = {"euid": os.geteuid(), "can_mount": can_mount(), "molecules": molecules}
    owns = ray_session()
    try:
        base = workdir / "base_db"
        shutil.rmtree(base, ignore_errors=True)
        summary = _embed([part], base, checkpoint)
        figures["base"] = {
            "rows": summary.table_rows,
            "error_rows": summary.error_rows,
            "commits": summary.commits,
        }
        bad = sum(1 for i in range(molecules) if i % 20 == 19)  # write_catalog's unparsable rows
        expected = (molecules - bad, bad)
        figures["expected_rows"] = list(expected)
        figures["read_only"] = read_only(base, workdir, full, checkpoint)
        figures["full_disk"] = full_disk(base, workdir, full, checkpoint, expected)
        figures["damaged_data"] = damaged(base, workdir, part, checkpoint, "data")
        figures["damaged_manifest"] = damaged(base, workdir, part, checkpoint, "manifest")
    finally:
        if owns:
            import ray

            ray.shutdown()
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--molecules", type=int, default=400)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    write_report(args.out, run(args.workdir, args.molecules, args.model))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
