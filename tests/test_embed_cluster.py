"""The embedding job as a process: killed part-way and resumed, and on a two-node Ray cluster.

Every process started here runs in its own session and is killed by process group, so a failing
test leaves nothing behind (the cluster is stopped in a `finally`, never with `ray stop`, which
would stop every Ray instance on the machine).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

lancedb = pytest.importorskip("lancedb")
pytest.importorskip("ray")

from test_embed_job import direct_embeddings, make_checkpoint, sample_rows, write_csv  # noqa: E402

RAY = str(Path(sys.executable).with_name("ray"))


def embed_command(catalog: Path, db: Path, model: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "mvclam.jobs.embed_cli", str(catalog), "--db", str(db), "--model", str(model),
        "--commit-rows", "4", "--views-batch-size", "4", "--batch-size", "4", "--no-progress", "--json", *extra,
    ]  # fmt: skip


def start(command: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen(command, start_new_session=True, **kwargs)


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (Ray workers start their own sessions, so a group kill misses them)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_group(process: subprocess.Popen, wait: float = 30.0) -> None:
    """SIGKILL the process, its group and all its descendants; wait until they are gone."""
    victims = [process.pid, *descendants(process.pid)]
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.wait(timeout=10)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in victims[1:]):
        time.sleep(0.2)


def summary_of(output: str) -> dict:
    return json.loads(output[output.index("{") :])


def table_ids(db: Path) -> tuple[list[str], list[str]]:
    connection = lancedb.connect(str(db))
    embedded = connection.open_table("molecules").to_lance().to_table(columns=["id"])["id"].to_pylist()
    failed = connection.open_table("molecules_errors").to_lance().to_table(columns=["id"])["id"].to_pylist()
    return embedded, failed


def committed_rows(db: Path) -> int:
    try:
        return sum(len(ids) for ids in table_ids(db))
    except (ValueError, OSError):  # tables not created yet
        return 0


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "model", 0)


@pytest.mark.slow
def test_killed_run_resumes_without_loss_or_duplicates(tmp_path, checkpoint):
    rows = [*sample_rows(60), ("BAD-1", "C1CC(("), ("BAD-2", "N[Pt](N)(Cl)Cl")]
    catalog = write_csv(tmp_path / "lib.csv", rows)
    db = tmp_path / "db"
    process = start(embed_command(catalog, db, checkpoint, "--views-workers", "1", "--num-cpus", "2"))
    try:
        deadline = time.monotonic() + 120
        while committed_rows(db) == 0 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        kill_group(process)
    kept = committed_rows(db)
    assert 0 < kept < len(rows), f"the kill should land part-way (kept {kept} of {len(rows)})"

    resumed = subprocess.run(
        embed_command(catalog, db, checkpoint, "--num-cpus", "2"), capture_output=True, text=True, timeout=240
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = summary_of(resumed.stdout)
    assert summary["skipped"] == kept and summary["embedded"] + summary["failed"] == len(rows) - kept

    embedded, failed = table_ids(db)
    assert sorted(failed) == ["BAD-1", "BAD-2"]
    assert sorted(embedded + failed) == sorted(i for i, _ in rows)  # every row in exactly one table, once
    table = lancedb.connect(str(db)).open_table("molecules").to_arrow()
    smiles = dict(rows)
    tokens = np.stack([np.stack(t) for t in table["tokens"].to_numpy(zero_copy_only=False)])
    reference = direct_embeddings(checkpoint, [smiles[i] for i in table["id"].to_pylist()])
    np.testing.assert_allclose(tokens, reference, atol=1e-5)  # same vectors as one uninterrupted run


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_nodes(address: str, count: int, env: dict[str, str], timeout: float = 60.0) -> None:
    probe = (
        "import ray, sys; ray.init(address=sys.argv[1], log_to_driver=False); "
        "print(sum(n['Alive'] for n in ray.nodes()))"
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = subprocess.run(
            [sys.executable, "-c", probe, address], capture_output=True, text=True, env=env
        )
        if result.returncode == 0 and result.stdout.strip().splitlines()[-1:] == [str(count)]:
            return
        time.sleep(0.5)
    raise TimeoutError(f"the Ray cluster at {address} did not reach {count} nodes")


@pytest.mark.slow
def test_two_node_cluster(tmp_path, checkpoint):
    """Head and worker node on loopback, 1 CPU each: views tasks and the encoder actor cannot share
    a node, so the job must run across both."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    temp_dir = tempfile.mkdtemp(prefix="mvr", dir="/tmp")  # short: Ray's socket paths have a length cap
    # A throwaway loopback cluster: no token auth (the driver of the job must not need the token).
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    common = ["--block", "--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
    head = start(
        [
            RAY,
            "start",
            "--head",
            "--port",
            str(port),
            "--include-dashboard",
            "false",
            "--temp-dir",
            temp_dir,
            *common,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    worker = None
    try:
        # The worker's `ray start` retries until the head's GCS answers: start both at once.
        worker = start(
            [RAY, "start", "--address", address, *common],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        wait_for_nodes(address, 2, env)
        catalog = write_csv(tmp_path / "lib.csv", [*sample_rows(16), ("BAD", "")])
        result = subprocess.run(
            embed_command(catalog, tmp_path / "db", checkpoint, "--address", address),
            capture_output=True,
            text=True,
            timeout=240,
            env=env,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        summary = summary_of(result.stdout)
        assert (summary["embedded"], summary["failed"]) == (16, 1)
        assert len(set(summary["nodes"]["views"]) | set(summary["nodes"]["encode"])) == 2
        embedded, failed = table_ids(tmp_path / "db")
        assert len(embedded) == 16 and failed == ["BAD"]
    finally:
        for process in (worker, head):
            if process is not None:
                kill_group(process)  # SIGKILL: Ray's SIGTERM drain waits 30 s
