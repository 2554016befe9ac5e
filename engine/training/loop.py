"""One training loop for both stages, in one process or as a Ray Train worker.

``train_loop(config_dict)`` is the function Ray Train's ``TorchTrainer`` runs on every worker; the
single-process default calls the same function directly. Under Ray Train the model is wrapped with
``ray.train.torch.prepare_model`` (DDP), each worker takes every ``world_size``-th batch of the
shared shuffled order, and checkpoints are reported with ``ray.train.report``. Resume order: the
checkpoint Ray Train hands back, else ``OUTPUT/checkpoints/last``.

A stage is a ``TrainingTask``: it owns the module being trained and turns a batch of
(views, descriptions, molecule groups) into named losses.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from mvclam.engine.training.config import PairData, TrainConfig, TrainingTask
from mvclam.engine.training.metrics import MetricsLog, plot_curves
from mvclam.engine.training.state import (
    TrainerState,
    has_training_state,
    load_training_state,
    replace_directory,
    save_training_state,
)
from mvclam.engine.views import MoleculeViews

LAST_CHECKPOINT = "last"
BEST_CHECKPOINT = "best"
FINAL_CHECKPOINT = "final"


@dataclass
class TrainingResult:
    state: TrainerState
    output_dir: Path
    final_checkpoint: Path | None
    stopped_early: bool


def _ray_context() -> tuple[int, int]:
    """(rank, world size): (0, 1) outside Ray Train."""
    try:
        import ray.train

        context = ray.train.get_context()
        return context.get_world_rank(), context.get_world_size()
    except Exception:  # not inside a Ray Train worker (or Ray not installed)
        return 0, 1


def _in_ray_train() -> bool:
    return _ray_context()[1] > 1


def _schedule(config: TrainConfig, total_steps: int) -> Callable[[int], float]:
    """Linear warm-up, then cosine decay to min_learning_rate_ratio of the peak."""

    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / max(1, config.warmup_steps)
        progress = min(1.0, (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps))
        cosine = 0.5 * (1 + math.cos(math.pi * progress))
        return config.min_learning_rate_ratio + (1 - config.min_learning_rate_ratio) * cosine

    return factor


def epoch_batches(
    size: int,
    batch_size: int,
    seed: int,
    epoch: int,
    rank: int,
    world: int,
    lengths: np.ndarray | None = None,
    bucket_batches: int = 50,
) -> list[np.ndarray]:
    """This worker's batches of one epoch: a seeded shuffle shared by all workers, split round-robin.

    With `lengths` (atoms per row), each run of `bucket_batches` batches of the shuffle is sorted by
    length before it is cut, and the batches are shuffled again: rows of similar size share a batch,
    so a 200-atom molecule no longer pads 31 small ones (the pair features grow with atoms squared).
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(size)
    if lengths is not None:
        span = batch_size * bucket_batches
        order = np.concatenate(
            [
                chunk[np.argsort(lengths[chunk], kind="stable")]
                for chunk in np.split(order, range(span, size, span))
            ]
        )
    batches = [order[i : i + batch_size] for i in range(0, size - batch_size + 1, batch_size)]
    if lengths is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    usable = len(batches) - len(batches) % world  # every worker takes the same number of steps
    return batches[rank:usable:world]


def _select(data: PairData, index: np.ndarray) -> tuple[list[MoleculeViews], list[str], torch.Tensor]:
    return (
        [data.views[i] for i in index],
        [data.descriptions[i] for i in index],
        torch.as_tensor(np.asarray(data.group_ids)[index]),
    )


@torch.no_grad()
def evaluate(task: TrainingTask, module: nn.Module, data: PairData, config: TrainConfig) -> dict[str, float]:
    """Mean validation losses over a fixed set of batches (the same every time, so curves compare)."""
    module.eval()
    totals: dict[str, float] = {}
    batches = epoch_batches(len(data), config.batch_size, config.seed + 1, epoch=0, rank=0, world=1)
    batches = batches[: config.eval_batches]
    for index in batches:
        for name, value in task.losses(module, *_select(data, index)).items():
            totals[name] = totals.get(name, 0.0) + float(value)
    module.train()
    return {name: value / max(1, len(batches)) for name, value in totals.items()}


class CheckpointWriter:
    """Writes ``OUTPUT/checkpoints/last`` (rank 0) and, under Ray Train, reports it to Ray."""

    def __init__(self, output_dir: Path, rank: int):
        self.root = output_dir / "checkpoints"
        self.rank = rank
        self.root.mkdir(parents=True, exist_ok=True)

    @property
    def last(self) -> Path:
        return self.root / LAST_CHECKPOINT

    def resume_directory(self) -> Path | None:
        if _in_ray_train():
            import ray.train

            checkpoint = ray.train.get_checkpoint()
            if checkpoint is not None:
                return Path(checkpoint.to_directory(tempfile.mkdtemp(prefix="mvclam-resume-")))
        return self.last if has_training_state(self.last) else None

    def save_model(self, task, name: str, dtype: torch.dtype) -> None:
        """The model alone (no optimizer state) as OUTPUT/checkpoints/<name>, e.g. the best so far."""
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))
        task.save(staging, dtype)
        replace_directory(staging, self.root / name)

    def save(
        self, task, optimizer, scheduler, state: TrainerState, dtype: torch.dtype, metrics: dict
    ) -> None:
        if self.rank == 0:
            staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))
            task.save(staging, dtype)
            save_training_state(staging, optimizer, scheduler, state)
            replace_directory(staging, self.last)
        if _in_ray_train():
            import ray.train

            checkpoint = ray.train.Checkpoint.from_directory(str(self.last)) if self.rank == 0 else None
            ray.train.report(metrics, checkpoint=checkpoint)


def train_loop(config_dict: dict[str, Any], task: TrainingTask | None = None, data=None) -> TrainingResult:
    """Train until epochs, max_steps or the time limit; safe to kill and call again (it resumes)."""
    from mvclam.engine.training.tasks import build_task, load_split

    config = TrainConfig.from_dict(config_dict)
    rank, world = _ray_context()
    torch.manual_seed(config.seed + rank)
    output_dir = Path(config.output_dir)
    task = task or build_task(config)
    train_data, validation_data = data or (
        load_split(config.data_dir, "train", config.train_kind),
        load_split(config.data_dir, "validation", "pairs"),
    )

    task.setup(train_data, validation_data, output_dir)
    lengths = np.array([v.num_atoms for v in train_data.views]) if config.bucket_by_size else None

    def batches_of(epoch: int) -> list[np.ndarray]:
        return epoch_batches(len(train_data), config.batch_size, config.seed, epoch, rank, world, lengths)

    steps_per_epoch = len(batches_of(0))
    if steps_per_epoch == 0:
        raise ValueError(
            f"{len(train_data)} training rows are fewer than one batch of {config.batch_size} per worker"
        )
    total_steps = min(config.max_steps or 10**12, steps_per_epoch * config.epochs)
    optimizer = torch.optim.AdamW(
        task.trainable_parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(config, total_steps))
    writer = CheckpointWriter(output_dir, rank)
    log = MetricsLog(output_dir) if rank == 0 else None

    state = TrainerState()
    resume = writer.resume_directory()
    if resume is not None:
        task.load_weights(resume)
        state = load_training_state(resume, optimizer, scheduler)
        if log:
            log.truncate_after(state.step)
            print(
                f"resumed from {resume} at step {state.step} (epoch {state.epoch}, batch {state.batch_in_epoch})"
            )

    module = task.module
    if world > 1:
        import ray.train.torch

        module = ray.train.torch.prepare_model(module)
    module.train()
    dtype = getattr(torch, config.checkpoint_dtype)
    started = time.monotonic()
    base_elapsed = state.elapsed_seconds
    stopped_early = False

    def elapsed() -> float:
        return base_elapsed + time.monotonic() - started

    def out_of_time() -> bool:
        limit = config.time_limit_minutes
        expired = limit is not None and time.monotonic() - started > limit * 60
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # Workers must stop (and report) at the same step, or ray.train.report would hang.
            flag = torch.tensor([float(expired)], device=next(module.parameters()).device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            expired = bool(flag.item())
        return expired

    progress = tqdm(
        total=total_steps, initial=state.step, disable=rank != 0, desc=f"{config.stage}", unit="step"
    )
    while state.step < total_steps and state.epoch < config.epochs and not stopped_early:
        batches = batches_of(state.epoch)
        for index in _remaining(batches, state.batch_in_epoch):
            losses = task.losses(module, *_select(train_data, index))
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(task.trainable_parameters(), config.grad_clip)
            optimizer.step()
            scheduler.step()
            state.step += 1
            state.batch_in_epoch += 1
            state.elapsed_seconds = elapsed()
            progress.update(1)
            progress.set_postfix(loss=f"{losses['loss'].item():.3f}")
            if log and state.step % config.log_every == 0:
                log.write(_row(state, "train", losses, scheduler.get_last_lr()[0]))

            metrics: dict[str, float] = {"step": state.step, "loss": losses["loss"].item()}
            if state.step % config.eval_every == 0 or state.step == total_steps:
                validation = evaluate(task, module, validation_data, config)
                metrics.update({f"validation_{k}": v for k, v in validation.items()})
                if log:
                    log.write(_row(state, "validation", validation, scheduler.get_last_lr()[0]))
                if (
                    state.best_validation_loss is None
                    or validation.get("loss", math.inf) < state.best_validation_loss
                ):
                    state.best_validation_loss = validation.get("loss")
            if config.retrieval_eval_every and (
                state.step % config.retrieval_eval_every == 0 or state.step == total_steps
            ):
                retrieval = task.retrieval_metrics(module, validation_data)  # type: ignore[attr-defined]
                metrics.update({f"validation_{k}": v for k, v in retrieval.items()})
                if log:
                    log.write(_row(state, "validation", retrieval, scheduler.get_last_lr()[0]))
                best = state.extra.get("best_t2m_mrr")
                if rank == 0 and (best is None or retrieval["t2m_mrr"] > best):
                    state.extra.update(best_t2m_mrr=retrieval["t2m_mrr"], best_step=state.step)
                    writer.save_model(task, BEST_CHECKPOINT, dtype)
            stopped_early = out_of_time()
            if state.step % config.checkpoint_every == 0 or state.step >= total_steps or stopped_early:
                writer.save(task, optimizer, scheduler, state, dtype, metrics)
            if state.step >= total_steps or stopped_early:
                break
        else:
            state.epoch += 1
            state.batch_in_epoch = 0
    progress.close()

    final = None
    if rank == 0:
        if not stopped_early:
            final = output_dir / FINAL_CHECKPOINT
            staging = Path(tempfile.mkdtemp(prefix=".staging-final-", dir=output_dir))
            task.save(staging, dtype)
            replace_directory(staging, final)
        if log:
            plot_curves(log)
    return TrainingResult(
        state=state, output_dir=output_dir, final_checkpoint=final, stopped_early=stopped_early
    )


def _remaining(batches: list[np.ndarray], consumed: int) -> Iterator[np.ndarray]:
    yield from batches[consumed:]


def _row(state: TrainerState, split: str, values: dict[str, Any], learning_rate: float) -> dict[str, Any]:
    row: dict[str, Any] = {
        "step": state.step,
        "epoch": state.epoch,
        "split": split,
        "learning_rate": learning_rate,
        "elapsed_seconds": round(state.elapsed_seconds, 1),
    }
    for name in ("loss", "contrastive", "matching", "captioning", "retrieval_accuracy", "t2m_mrr", "m2t_mrr"):
        if name in values:
            row[name] = float(
                values[name].detach() if isinstance(values[name], torch.Tensor) else values[name]
            )
    return row


def config_as_dict(config: TrainConfig) -> dict[str, Any]:
    return asdict(config)
