"""The two training stages as ``TrainingTask``s, and loading of prepared splits."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mvclam.engine.models import MVCLAM, load_config
from mvclam.engine.models.config import MVCLAMConfig, apply_overrides
from mvclam.engine.training.loop import PairData, TrainConfig, TrainingTask
from mvclam.engine.views import MoleculeViews, collate_views


def _device() -> torch.device:
    try:
        import ray.train.torch

        return ray.train.torch.get_device()
    except Exception:  # outside Ray Train
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _unwrap(module: nn.Module) -> nn.Module:
    return module.module if hasattr(module, "module") else module  # DDP keeps the model in .module


class Stage1Task:
    """MQ-Former alignment: token-level contrastive + matching (hard negatives) + captioning losses."""

    def __init__(self, model: MVCLAM):
        self.module = model.to(_device())

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.module.parameters() if p.requires_grad]

    def losses(
        self, module: nn.Module, views: list[MoleculeViews], descriptions: list[str], group_ids: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        model: MVCLAM = _unwrap(module)
        device = next(model.parameters()).device
        batch = collate_views(views).to(device)
        text_ids, text_mask = model.tokenize(descriptions)
        out = module(batch, text_ids, text_mask, group_ids.to(device))
        result = {
            "loss": out.loss,
            "contrastive": out.contrastive,
            "matching": out.matching,
            "captioning": out.captioning,
        }
        if not module.training:
            # In-batch molecule→text top-1 accuracy: a cheap validation signal between full evaluations.
            with torch.no_grad():
                tokens = model.embed_molecules(batch).tokens
                texts = model.embed_text_ids(text_ids, text_mask)
                predicted = model.score(texts, tokens).t().argmax(dim=1).cpu()
                correct = group_ids[predicted] == group_ids
                result["retrieval_accuracy"] = correct.float().mean()
        return result

    def save(self, directory: Path, dtype: torch.dtype) -> None:
        self.module.save_pretrained(directory, weights_dtype=dtype)

    def load_weights(self, directory: Path) -> None:
        loaded = MVCLAM.from_pretrained(directory)
        self.module.load_state_dict(loaded.state_dict())
        self.module.model_version = loaded.model_version


class Stage2Task:
    """Projector + LoRA on the LLM; the stage-1 MV-CLAM is frozen and supplies the soft prompts.

    The saved checkpoint is the stage-1 model plus a ``captioner/`` folder, so one directory serves
    embedding, search and captioning.
    """

    def __init__(self, mvclam: MVCLAM, captioner: nn.Module):
        device = _device()
        self.mvclam = mvclam.to(device).eval().requires_grad_(False)
        self.module = captioner.to(device)

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, captioner_options: dict | None = None) -> Stage2Task:
        from mvclam.engine.captioning.checkpoint import has_captioner, load_captioner
        from mvclam.engine.captioning.model import CaptionerConfig, MoleculeCaptioner

        mvclam = MVCLAM.from_pretrained(checkpoint)
        if has_captioner(checkpoint):  # continue training a captioner
            return cls(mvclam, load_captioner(checkpoint).train())
        return cls(mvclam, MoleculeCaptioner(CaptionerConfig.for_model(mvclam, **(captioner_options or {}))))

    def trainable_parameters(self) -> list[nn.Parameter]:
        return _unwrap(self.module).trainable_parameters()

    def losses(
        self, module: nn.Module, views: list[MoleculeViews], descriptions: list[str], group_ids: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        from mvclam.engine.captioning.model import molecule_query_states

        device = next(self.mvclam.parameters()).device
        with torch.no_grad():
            query_states = molecule_query_states(self.mvclam, collate_views(views).to(device))
        loss = module(query_states, descriptions)  # through the (DDP) wrapper so gradients sync
        return {"loss": loss, "captioning": loss}

    def save(self, directory: Path, dtype: torch.dtype) -> None:
        from mvclam.engine.captioning.checkpoint import save_captioner

        self.mvclam.save_pretrained(directory, weights_dtype=dtype)
        captioner = _unwrap(self.module)
        captioner.trained = True
        save_captioner(captioner, directory, weights_dtype=dtype)

    def load_weights(self, directory: Path) -> None:
        from mvclam.engine.captioning.checkpoint import load_captioner

        captioner = _unwrap(self.module)
        loaded = load_captioner(directory)
        captioner.load_state_dict(loaded.state_dict())
        captioner.train()


def build_model(config: TrainConfig) -> MVCLAM:
    if not config.init_from:
        return MVCLAM(load_config(config.model_config, config.model_overrides))
    model = MVCLAM.from_pretrained(config.init_from)
    # The architecture comes from the checkpoint; only the loss settings may change between phases
    # (e.g. continue without the matching loss).
    not_loss = [item for item in config.model_overrides if not item.strip().startswith("loss.")]
    if not_loss:
        raise ValueError(
            f"with init_from only loss.* overrides apply (the checkpoint fixes the rest): {not_loss}"
        )
    if config.model_overrides:
        data = apply_overrides(model.config.to_dict(), config.model_overrides)
        model.config.loss = MVCLAMConfig.from_dict(data).loss
    return model


def restrict_trainable(model: nn.Module, prefixes: list[str]) -> None:
    """Freeze every parameter whose name starts with none of `prefixes` (already frozen ones stay so)."""
    matched = 0
    for name, parameter in model.named_parameters():
        keep = any(name.startswith(prefix) for prefix in prefixes)
        matched += keep
        parameter.requires_grad_(parameter.requires_grad and keep)
    if not matched:
        raise ValueError(f"trainable prefixes {prefixes} match no parameter of the model")


def build_task(config: TrainConfig) -> TrainingTask:
    if config.stage == "stage1":
        model = build_model(config)
        if config.trainable:
            restrict_trainable(model, config.trainable)
        return Stage1Task(model)
    if config.trainable:
        raise ValueError("trainable applies to stage1; stage 2 trains its projector and LoRA only")
    if config.stage == "stage2":
        if not config.init_from:
            raise ValueError("stage2 needs init_from: the stage-1 checkpoint whose query outputs it captions")
        return Stage2Task.from_checkpoint(config.init_from, config.captioner)
    raise ValueError(f"unknown stage '{config.stage}'; expected stage1 or stage2")


def load_split(data_dir: str | Path, split: str, kind: str) -> PairData:
    from mvclam.engine.data import PairDataset

    return PairDataset.load(Path(data_dir), split, kind=kind)
