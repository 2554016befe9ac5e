"""The training run's config (the YAML schema of configs/train_*.yaml) and the two protocols the
loop is written against: a prepared split (`PairData`) and a stage (`TrainingTask`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from mvclam.engine.config_io import build_dataclass, load_dataclass
from mvclam.engine.views import MoleculeViews


@dataclass
class TrainConfig:
    """Everything a run needs; also the YAML schema of configs/train_*.yaml."""

    stage: str = "stage1"  # "stage1" (MQ-Former alignment) or "stage2" (captioning LLM)
    data_dir: str = "runs/data/v2"  # output of `mvclam prepare` (the README and evaluate use the same)
    train_kind: str = "pairs"  # "pairs", or "weak" for weak-label pre-training
    output_dir: str = "runs/stage1"
    model_config: str = "small"
    model_overrides: list[str] = field(default_factory=list)
    init_from: str | None = None  # checkpoint to start from (pre-trained stage 1, or stage 1 for stage 2)
    # Stage 1: train only parameters whose names start with one of these prefixes (empty = all), e.g.
    # ["matching_head"] re-fits the re-ranking head without moving a single embedding.
    trainable: list[str] = field(default_factory=list)
    # Stage 1, LiT-style: "frozen" freezes the Q-Former's text path and caches every description's
    # [CLS] state once (text_cache.py), so a step costs the molecule branch only.
    text_tower: str = "train"
    text_negatives: int = 0  # frozen text tower: cached training texts added as negatives per step (-1 = all)
    molecule_queue: int = 0  # frozen text tower: earlier steps' molecules kept as negatives of each text
    retrieval_eval_every: int = 0  # full validation MRR every n steps; the best is kept in checkpoints/best
    bucket_by_size: bool = False  # batch molecules of similar atom counts together (less padding)
    epochs: int = 10
    max_steps: int | None = None
    time_limit_minutes: float | None = None  # stop (with a checkpoint) after this much training time
    batch_size: int = 32
    learning_rate: float = 1e-4
    weight_decay: float = 0.05
    warmup_steps: int = 200
    min_learning_rate_ratio: float = 0.1
    grad_clip: float = 1.0
    log_every: int = 10
    eval_every: int = 200
    eval_batches: int = 8
    checkpoint_every: int = 200
    seed: int = 0
    num_workers: int = 1  # >1 runs under Ray Train
    use_gpu: bool = False
    ray_address: str | None = None
    checkpoint_dtype: str = "float32"  # "float16" halves the shipped checkpoint
    captioner: dict[str, Any] = field(default_factory=dict)  # stage 2: CaptionerConfig values (e.g. lora_r)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return build_dataclass(cls, data, "training config keys")

    @classmethod
    def load(
        cls, stage: str, config: str | Path | None = None, overrides: list[str] | None = None
    ) -> TrainConfig:
        """configs/train_<stage>.yaml (or `config`, a name or YAML path), then key=value overrides."""
        return load_dataclass(
            cls, config or f"train_{stage}", "training config keys", overrides, {"stage": stage}
        )


class PairData(Protocol):
    """What the loop needs from a prepared split (``mvclam.engine.data.PairDataset`` provides it)."""

    views: list[MoleculeViews]
    descriptions: list[str]
    group_ids: np.ndarray

    def __len__(self) -> int: ...


class TrainingTask(Protocol):
    module: nn.Module  # what is optimised (and wrapped in DDP)

    def setup(self, train_data: PairData, validation_data: PairData, output_dir: Path) -> None: ...

    def trainable_parameters(self) -> list[nn.Parameter]: ...

    def losses(
        self, module: nn.Module, views: list[MoleculeViews], descriptions: list[str], group_ids: torch.Tensor
    ) -> dict[str, torch.Tensor]: ...

    def save(self, directory: Path, dtype: torch.dtype) -> None: ...

    def load_weights(self, directory: Path) -> None: ...
