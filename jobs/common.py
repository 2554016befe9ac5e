"""What the jobs share: Ray set-up, job configs, GPU detection, checkpoints shipped to actors, and
the per-row retry of a batch that fails. Ray is imported inside the functions that need it."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from mvclam.engine.config_io import load_dataclass

T = TypeVar("T")
R = TypeVar("R")
MAX_REASON_CHARS = 500  # error text kept per failed row


def init_ray(
    address: str | None = None,
    num_cpus: int | None = None,
    *,
    private: bool = True,
    log_to_driver: bool = False,
) -> bool:
    """Connect to a cluster (`address`, else RAY_ADDRESS) or start a private local instance
    (address="local": never attach by accident to another cluster on the machine; `private=False`
    leaves that choice to Ray). Returns whether this call started Ray (and so must shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=log_to_driver)
    elif private:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=log_to_driver)
    else:
        ray.init(num_cpus=num_cpus, log_to_driver=log_to_driver)
    return True


def local_ray_cpus(address: str | None) -> float | None:
    """The CPUs of the local Ray instance a job started, or None on a cluster (`address` or
    RAY_ADDRESS): there the job keeps its own CPU requests, which an autoscaler may meet."""
    import ray

    if address or os.environ.get("RAY_ADDRESS"):
        return None
    return float(ray.cluster_resources().get("CPU", 0))


def cpu_fit_scale(actor_cpus: float, task_cpus: float, cpus: float) -> float:
    """The factor (at most 1) for the CPU requests of actors holding `actor_cpus` in all and of one
    task asking `task_cpus`, so that both fit a Ray of `cpus` CPUs (1 when they fit or `cpus` is
    unknown). Ray holds the actors' CPUs for the whole run: if the task does not fit beside them it
    is never scheduled and the run hangs (a 1-core machine, `--actors 2` on 2 cores)."""
    needed = actor_cpus + task_cpus
    return 1.0 if cpus <= 0 or needed <= cpus else cpus / needed


def load_job_config(job_type: type[T], default: str, config: str | Path | None, values: dict[str, Any]) -> T:
    """A job dataclass from its YAML config (`default` names the shipped one), with `values` (e.g.
    CLI arguments; None means "not given") taking precedence. Unknown YAML keys are an error."""
    return load_dataclass(job_type, config or default, f"{default} job key(s)", values=values)


def actor_gpus(requested: float | None) -> float:
    """GPUs per actor: `requested`, else one when the cluster has GPUs, else none."""
    if requested is not None:
        return requested
    import ray

    return 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0


def checkpoint_blob(directory: str | Path) -> dict[str, bytes]:
    """A checkpoint directory as {relative path: bytes}: shipped through the object store so that
    actors on other nodes load the identical model without a shared filesystem."""
    root = Path(directory)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def unpack_checkpoint(checkpoint: dict[str, bytes] | Any, directory: str | Path) -> Path:
    """Writes a `checkpoint_blob` (or the Ray object ref of one) into `directory`; returns it."""
    import ray

    blob = ray.get(checkpoint) if isinstance(checkpoint, ray.ObjectRef) else checkpoint
    root = Path(directory)
    for name, data in blob.items():
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return root


def error_reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:MAX_REASON_CHARS]


def retry_per_row(
    run: Callable[[Sequence[T]], Sequence[R]],
    items: Sequence[T],
    is_fatal: Callable[[BaseException], bool] = lambda exc: False,
) -> tuple[list[R | None], list[str | None]]:
    """(results, errors) of `run(items)` (one result per item). When the batch fails, each item is
    run alone, so only the items that fail get an error (and no result); an error for which
    `is_fatal` holds (the backend itself broke) is raised instead of recorded."""
    try:
        return list(run(items)), [None] * len(items)
    except Exception as batch_error:
        if is_fatal(batch_error):
            raise
    results: list[R | None] = [None] * len(items)
    errors: list[str | None] = [None] * len(items)
    for i, item in enumerate(items):
        try:
            results[i] = run([item])[0]
        except Exception as exc:
            if is_fatal(exc):
                raise
            errors[i] = error_reason(exc)
    return results, errors


def default_data_dir() -> Path:
    """The shared data directory: $MVCLAM_DATA_DIR, else ../shared/data (from the working
    directory, then from the repository)."""
    if os.environ.get("MVCLAM_DATA_DIR"):
        return Path(os.environ["MVCLAM_DATA_DIR"])
    candidates = [
        Path.cwd() / ".." / "shared" / "data",
        Path(__file__).resolve().parents[1] / ".." / "shared" / "data",
    ]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    return candidates[0]
