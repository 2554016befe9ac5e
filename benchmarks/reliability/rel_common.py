"""Shared plumbing of the reliability suite: models, catalogs, child processes, table checks.

The suite's scripts (`rel_*.py`, `campaign.py`) import this module from their own folder; the
bounded CI test (`tests/test_reliability_suite.py`) puts the folder on `sys.path`. Every script
runs the product through its public entry points (`mvclam` CLI processes, `run_embed`,
`CatalogSearcher`, `create_app`), never through private helpers, so the figures describe what a
user gets.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"

# Child processes: one thread per library (the machine is shared), no progress bars, telemetry off.
CHILD_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
    "PYTHONUNBUFFERED": "1",
}

# The test suite's tiny model (tests/test_embed_job.py); copied so the scripts run without pytest.
TINY = [
    "qformer.init=none",
    "qformer.hidden_size=32",
    "qformer.num_layers=2",
    "qformer.num_heads=4",
    "qformer.intermediate_size=64",
    "qformer.num_query_tokens=3",
    "encoder_2d.hidden_size=32",
    "encoder_2d.num_layers=1",
    "encoder_2d.num_heads=4",
    "encoder_2d.ffn_size=64",
    "encoder_3d.hidden_size=32",
    "encoder_3d.num_layers=1",
    "encoder_3d.num_heads=4",
    "encoder_3d.ffn_size=64",
    "encoder_3d.num_gaussians=16",
    "embedding_dim=16",
    "max_text_length=16",
]


def make_tiny_checkpoint(directory: Path, seed: int = 0, captioner: bool = False) -> Path:
    """The tests' tiny random MV-CLAM (test_embed_job.make_checkpoint), optionally with a random
    captioner marked trained (what `mvclam caption` needs; test_caption_table's fixture)."""
    import torch

    directory = Path(directory)
    if (directory / "config.json").exists() and (not captioner or (directory / "captioner").exists()):
        return directory
    try:  # the test helper itself where tests/ is importable
        sys.path.insert(0, str(TESTS))
        from test_embed_job import make_checkpoint  # type: ignore[import-not-found]

        path = make_checkpoint(directory, seed)
    except ImportError:
        from mvclam.engine.models.config import load_config
        from mvclam.engine.models.mvclam import MVCLAM

        torch.manual_seed(seed)
        path = MVCLAM(load_config("small", TINY)).save_pretrained(directory)
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(str(TESTS))
    if captioner:
        from mvclam.engine.captioning import CaptionerConfig, MoleculeCaptioner, save_captioner
        from mvclam.engine.models.mvclam import MVCLAM

        torch.manual_seed(seed)
        model = MoleculeCaptioner(CaptionerConfig.for_model(MVCLAM.from_pretrained(path), lora_dropout=0.0))
        model.trained = True
        save_captioner(model, path)
    return Path(path)


def resolve_model(model: str, workdir: Path, seed: int = 0, captioner: bool = False) -> str | None:
    """`tiny` (a tiny random checkpoint made in `workdir`), `shipped` (None: the job default) or a
    checkpoint directory."""
    if model == "tiny":
        return str(make_tiny_checkpoint(workdir / f"tiny-{seed}", seed, captioner))
    if model == "shipped":
        return None
    return model


def good_molecules() -> list[tuple[str, str]]:
    from hostile_inputs import good_molecules as goods

    return goods()


def write_catalog(path: Path, n: int, bad_every: int = 0, prefix: str = "m", offset: int = 0) -> Path:
    """A CSV of `n` molecules with unique ids `prefix-000000…` (the sample catalog's good molecules,
    repeated) and, every `bad_every` rows, an unparsable one."""
    import csv

    goods = good_molecules()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "smiles"])
        for i in range(offset, offset + n):
            smiles = "C1CC((" if bad_every and i % bad_every == bad_every - 1 else goods[i % len(goods)][1]
            writer.writerow([f"{prefix}-{i:06d}", smiles])
    return path


# --- child processes --------------------------------------------------------------------------


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(CHILD_ENV)
    env.pop("RAY_ADDRESS", None)  # every child driver starts its own private Ray
    env.update(extra or {})
    return env


def mvclam_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "mvclam.jobs.cli", *args]


def embed_args(
    inputs: Sequence[str | Path],
    db: str | Path,
    model: str | None,
    table: str = "molecules",
    commit_rows: int = 8,
    views_batch_size: int = 8,
    batch_size: int = 8,
    commit_seconds: float = 0,
    extra: Sequence[str] = (),
) -> list[str]:
    args = ["embed", *map(str, inputs), "--db", str(db), "--table", table, "--no-progress", "--json"]
    args += ["--commit-rows", str(commit_rows), "--views-batch-size", str(views_batch_size)]
    args += ["--batch-size", str(batch_size), "--commit-seconds", str(commit_seconds)]
    if model:
        args += ["--model", model]
    return [*args, *extra]


@dataclass
class Child:
    """A child process in its own session (so its process group can be killed as a whole)."""

    popen: subprocess.Popen
    log: Path
    started: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def descendants(self) -> list[Any]:
        import psutil

        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def wait(self, timeout: float | None = None) -> int:
        return self.popen.wait(timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def json_output(self) -> dict[str, Any] | None:
        """The last JSON object printed on stdout (`--json` summaries)."""
        text = (
            self.log.with_suffix(".out").read_text(errors="replace")
            if self.log.with_suffix(".out").exists()
            else ""
        )
        start = text.find("{")
        if start < 0:
            return None
        with contextlib.suppress(json.JSONDecodeError):
            return json.loads(text[start:])
        return None


def start_child(command: Sequence[str], log: Path, env: dict[str, str] | None = None) -> Child:
    """Starts `command` in a new session; stderr goes to `log`, stdout to `log` with `.out`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log.with_suffix(".out"), "w") as stdout, open(log, "w") as stderr:
        popen = subprocess.Popen(
            list(command),
            stdout=stdout,
            stderr=stderr,
            cwd=ROOT,
            env=env or child_env(),
            start_new_session=True,
        )
    return Child(popen, log)


def kill_group(child: Child, grace_s: float = 10.0) -> dict[str, int]:
    """SIGKILL the child's process group; then its other descendants (Ray workers run in process
    groups of their own and normally die with their raylet) once `grace_s` has passed. Returns
    how many processes the group kill left behind."""
    import psutil

    before = child.descendants()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.wait(30)
    _, alive = psutil.wait_procs(before, timeout=grace_s)
    names = []
    for proc in alive:  # our own descendants only
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            names.append(proc.name())
            proc.kill()
    return {"processes": len(before) + 1, "left_after_group_kill": len(alive), "left": sorted(names)}


def kill_child_tree(child: Child) -> None:
    """Ends a child and its descendants (cleanup of a child that must not outlive the suite)."""
    import psutil

    if child.popen.poll() is None:
        kill_group(child, grace_s=5)
    for proc in child.descendants():
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()


def find_descendant(child: Child, needle: str) -> Any | None:
    """A descendant whose command line or name contains `needle` (e.g. "EncoderActor")."""
    import psutil

    for proc in child.descendants():
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            if needle in " ".join(proc.cmdline()) or needle in proc.name():
                return proc
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- tables -----------------------------------------------------------------------------------


@dataclass
class TableState:
    rows: int
    distinct_ids: int
    error_rows: int
    distinct_error_ids: int
    in_both: int
    version: int | None

    @property
    def duplicate_rows(self) -> int:
        return (self.rows - self.distinct_ids) + (self.error_rows - self.distinct_error_ids)


def table_names(db: str | Path) -> list[str]:
    import lancedb

    return list(lancedb.connect(str(db)).list_tables().tables)


def read_table(db: str | Path, table: str, columns: Sequence[str] | None = None):
    import lancedb

    handle = lancedb.connect(str(db)).open_table(table)
    return handle.to_lance().to_table(columns=list(columns) if columns else None)


def table_state(db: str | Path, table: str = "molecules") -> TableState:
    import lancedb

    connection = lancedb.connect(str(db))
    names = set(connection.list_tables().tables)
    ids: list[str] = []
    errors: list[str] = []
    version = None
    if table in names:
        handle = connection.open_table(table)
        version = handle.version
        ids = handle.to_lance().to_table(columns=["id"])["id"].to_pylist()
    if f"{table}_errors" in names:
        errors = (
            connection.open_table(f"{table}_errors").to_lance().to_table(columns=["id"])["id"].to_pylist()
        )
    return TableState(
        len(ids), len(set(ids)), len(errors), len(set(errors)), len(set(ids) & set(errors)), version
    )


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


@contextlib.contextmanager
def timed(figures: dict[str, Any], key: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        figures[key] = round(time.perf_counter() - started, 2)


def ray_session(num_cpus: int = 2) -> bool:
    """Starts a private local Ray for in-process jobs unless one is running; returns whether it did."""
    import ray

    if ray.is_initialized():
        return False
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    return True


def write_report(path: str | Path | None, figures: dict[str, Any]) -> None:
    text = json.dumps(figures, indent=2, default=str, ensure_ascii=True)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text + "\n")
    print(text)


def internal_leak(text: str) -> str | None:
    """What in an error message reveals internals (a traceback, a source path, a Rust location),
    or None."""
    import re

    for pattern in (
        r"Traceback \(most recent call last\)",
        r"File \"[^\"]+\", line \d+",
        r"\.rs:\d+",
        r"\.py\b",
        r"/(?:root|home|usr|tmp|work|opt|var|etc)/",
        r"site-packages",
        r"\.cargo",
    ):
        if re.search(pattern, text):
            return pattern
    return None


def is_root() -> bool:
    return os.geteuid() == 0


def can_mount() -> bool:
    """Whether this process may mount a tmpfs (root with CAP_SYS_ADMIN, e.g. this VM or a
    privileged container)."""
    if not is_root():
        return False
    probe = Path(f"/tmp/mvclam-mount-probe-{os.getpid()}")
    probe.mkdir(exist_ok=True)
    try:
        ok = (
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)], capture_output=True
            ).returncode
            == 0
        )
        if ok:
            subprocess.run(["umount", str(probe)], capture_output=True)
        return ok
    finally:
        with contextlib.suppress(OSError):
            probe.rmdir()
