"""Resumable training state without pickle: optimizer moments and RNG states in safetensors, counters in JSON.

A checkpoint directory holds the model (``save_pretrained`` layout), ``optimizer.safetensors``
and ``trainer_state.json``. Directories are written next to their final place and renamed into
it, so a run killed while saving leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "trainer_state.json"


@dataclass
class TrainerState:
    step: int = 0  # optimiser steps taken
    epoch: int = 0  # current epoch
    batch_in_epoch: int = 0  # batches of `epoch` already consumed (resume mid-epoch)
    elapsed_seconds: float = 0.0  # training time summed over every resumed run
    best_validation_loss: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state_dict into flat tensors and a JSON-able remainder."""
    state_dict = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state_dict["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def restore_optimizer(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if not key.startswith("state."):
            continue
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    for index, values in meta.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def rng_tensors() -> dict[str, torch.Tensor]:
    numpy_state = np.random.get_state()
    return {
        "rng.torch": torch.get_rng_state(),
        "rng.numpy_keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
        "rng.numpy_pos": torch.tensor([numpy_state[2]], dtype=torch.int64),
        "rng.python": torch.tensor(list(random.getstate()[1]), dtype=torch.int64),
    }


def restore_rng(tensors: dict[str, torch.Tensor]) -> None:
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    if "rng.numpy_keys" in tensors:
        keys = tensors["rng.numpy_keys"].numpy().astype(np.uint32)
        np.random.set_state(("MT19937", keys, int(tensors["rng.numpy_pos"][0]), 0, 0.0))
    if "rng.python" in tensors:
        random.setstate((3, tuple(int(x) for x in tensors["rng.python"].tolist()), None))


def save_training_state(
    directory: Path,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: TrainerState,
) -> None:
    tensors, meta = optimizer_tensors(optimizer)
    tensors.update(rng_tensors())
    save_file(tensors, str(directory / OPTIMIZER_FILE))
    payload = {"trainer": asdict(state), "optimizer": meta, "scheduler": scheduler.state_dict()}
    (directory / STATE_FILE).write_text(json.dumps(payload, indent=2, default=float) + "\n")


def load_training_state(
    directory: Path, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler
) -> TrainerState:
    payload = json.loads((directory / STATE_FILE).read_text())
    tensors = load_file(str(directory / OPTIMIZER_FILE))
    restore_optimizer(optimizer, tensors, payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    restore_rng(tensors)
    return TrainerState(**payload["trainer"])


def has_training_state(directory: Path | None) -> bool:
    return (
        directory is not None
        and (directory / STATE_FILE).is_file()
        and (directory / OPTIMIZER_FILE).is_file()
    )


def replace_directory(staging: Path, final: Path) -> None:
    """Atomically (per rename) swap a fully written staging directory into place."""
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        final.rename(old)
    staging.rename(final)
    if old.exists():
        shutil.rmtree(old)
