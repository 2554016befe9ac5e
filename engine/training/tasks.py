"""The two training stages as ``TrainingTask``s, and loading of prepared splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from mvclam.engine.models import MVCLAM, load_config
from mvclam.engine.models.config import MVCLAMConfig, apply_overrides
from mvclam.engine.models.mvclam import ExtraNegatives
from mvclam.engine.training.config import PairData, TrainConfig, TrainingTask
from mvclam.engine.training.text_cache import MoleculeQueue, TextStateCache, freeze_text_tower
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
    """MQ-Former alignment: token-level contrastive + matching (hard negatives) + captioning losses.

    With ``text_tower="frozen"`` the text path is frozen and its [CLS] states cached (see
    text_cache.py); ``text_negatives`` cached training texts and a queue of ``molecule_queue``
    earlier molecules then join each step's contrastive loss as negatives.
    """

    def __init__(
        self,
        model: MVCLAM,
        text_tower: str = "train",
        text_negatives: int = 0,
        molecule_queue: int = 0,
        seed: int = 0,
    ):
        if text_tower not in ("train", "frozen"):
            raise ValueError(f"text_tower must be 'train' or 'frozen', got {text_tower!r}")
        if text_tower == "train" and text_negatives:
            raise ValueError("text_negatives needs text_tower: frozen (cached text states)")
        self.module = model.to(_device())
        self.text_tower = text_tower
        self.text_negatives = text_negatives
        self.queue = MoleculeQueue(molecule_queue)
        self.generator = torch.Generator().manual_seed(seed)
        self.cache: TextStateCache | None = None
        self.bank_rows: torch.Tensor | None = None  # cache rows of the training texts
        self.bank_groups: torch.Tensor | None = None
        if text_tower == "frozen":
            freeze_text_tower(model)

    def setup(self, train_data: PairData, validation_data: PairData, output_dir: Path) -> None:
        """Cache the text states of both splits (frozen text tower only)."""
        if self.text_tower != "frozen":
            return
        model: MVCLAM = _unwrap(self.module)
        texts = list(train_data.descriptions) + list(validation_data.descriptions)
        self.cache = TextStateCache.build(model, texts, output_dir / "text_cache")
        # One bank entry per training row: a text shared by two molecules is a candidate of each.
        self.bank_rows = self.cache.rows(train_data.descriptions)
        self.bank_groups = torch.as_tensor(np.asarray(train_data.group_ids))

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.module.parameters() if p.requires_grad]

    def _negatives(self, device: torch.device) -> ExtraNegatives:
        negatives = ExtraNegatives(molecule_tokens=self.queue.tokens, molecule_groups=self.queue.groups)
        if self.cache is not None and self.text_negatives and self.bank_rows is not None:
            assert self.bank_groups is not None
            count = len(self.bank_rows)
            pick = (
                torch.arange(count)
                if self.text_negatives < 0 or self.text_negatives >= count
                else torch.randperm(count, generator=self.generator)[: self.text_negatives]
            )
            negatives.text_states = self.cache.states[self.bank_rows[pick]].to(device)
            negatives.text_groups = self.bank_groups[pick].to(device)
        return negatives

    def losses(
        self, module: nn.Module, views: list[MoleculeViews], descriptions: list[str], group_ids: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        model: MVCLAM = _unwrap(module)
        device = next(model.parameters()).device
        batch = collate_views(views).to(device)
        group_ids = group_ids.to(device)
        negatives = self._negatives(device) if module.training else None
        if self.cache is not None:
            text_ids = text_mask = None
            text_states = self.cache.lookup(descriptions).to(device)
            out = module(batch, None, None, group_ids, text_states=text_states, negatives=negatives)
        else:
            text_ids, text_mask = model.tokenize(descriptions)
            text_states = None
            out = module(batch, text_ids, text_mask, group_ids, negatives=negatives)
        if module.training and out.molecule_tokens is not None:
            self.queue.push(out.molecule_tokens, group_ids)
        result = {
            "loss": out.loss,
            "contrastive": out.contrastive,
            "matching": out.matching,
            "captioning": out.captioning,
        }
        if not module.training:
            # In-batch molecule→text top-1 accuracy: a cheap validation signal between full evaluations.
            with torch.no_grad():
                tokens = out.molecule_tokens
                texts = self._text_vectors(model, descriptions, text_ids, text_mask, text_states)
                predicted = model.score(texts, tokens).t().argmax(dim=1).cpu()
                correct = group_ids.cpu()[predicted] == group_ids.cpu()
                result["retrieval_accuracy"] = correct.float().mean()
        return result

    def _text_vectors(self, model: MVCLAM, descriptions, text_ids, text_mask, text_states) -> torch.Tensor:
        if text_states is not None:
            return model.project_text_states(text_states)
        if text_ids is None:
            text_ids, text_mask = model.tokenize(descriptions)
        return model.embed_text_ids(text_ids, text_mask)

    @torch.no_grad()
    def retrieval_metrics(self, module: nn.Module, data: PairData, batch_size: int = 64) -> dict[str, float]:
        """Full-set text → molecule and molecule → text MRR over `data` (every distinct molecule a
        candidate), the number that picks the best checkpoint."""
        from mvclam.engine.evaluation.retrieval import (
            molecule_to_text_ranks,
            summarize_ranks,
            text_to_molecule_ranks,
        )

        model: MVCLAM = _unwrap(module)
        was_training = module.training
        model.eval()
        device = next(model.parameters()).device
        groups = np.asarray(data.group_ids)
        first_row = {}
        for row, group in enumerate(groups.tolist()):
            first_row.setdefault(group, row)
        molecule_rows = list(first_row.values())
        column_of = {group: column for column, group in enumerate(first_row)}
        order = sorted(range(len(molecule_rows)), key=lambda i: data.views[molecule_rows[i]].num_atoms)
        tokens: list[torch.Tensor | None] = [None] * len(molecule_rows)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = collate_views([data.views[molecule_rows[i]] for i in chunk]).to(device)
            embedded = model.embed_molecules(batch).tokens.float().cpu()
            for position, i in enumerate(chunk):
                tokens[i] = embedded[position]
        molecule_tokens = torch.stack(tokens)  # type: ignore[arg-type]
        texts = []
        for start in range(0, len(data), batch_size):
            descriptions = list(data.descriptions[start : start + batch_size])
            states = self.cache.lookup(descriptions).to(device) if self.cache is not None else None
            texts.append(self._text_vectors(model, descriptions, None, None, states).float().cpu())
        scores = model.score(torch.cat(texts), molecule_tokens).numpy()
        truth = np.array([column_of[g] for g in groups.tolist()])
        model.train(was_training)
        t2m = summarize_ranks(text_to_molecule_ranks(scores, truth))
        m2t = summarize_ranks(molecule_to_text_ranks(scores, truth))
        return {"t2m_mrr": t2m["mrr"], "t2m_hits@1": t2m["hits@1"], "m2t_mrr": m2t["mrr"]}

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
        self.references = None  # a ReferenceSet of the training split when the prompts cite references

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, captioner_options: dict | None = None) -> Stage2Task:
        from mvclam.engine.captioning.checkpoint import has_captioner, load_captioner
        from mvclam.engine.captioning.model import CaptionerConfig, MoleculeCaptioner

        mvclam = MVCLAM.from_pretrained(checkpoint)
        if has_captioner(checkpoint):  # continue training a captioner, its prompt as `captioner_options` say
            return cls(mvclam, load_captioner(checkpoint, prompt_changes=captioner_options).train())
        return cls(mvclam, MoleculeCaptioner(CaptionerConfig.for_model(mvclam, **(captioner_options or {}))))

    def setup(self, train_data: PairData, validation_data: PairData, output_dir: Path) -> None:
        """The frozen stage-1 model computes soft prompts per batch; a captioner that cites
        references gets the training split's described molecules (each molecule's own description
        is never its reference: `nearest` skips its InChIKey; validation molecules are not in it)."""
        from mvclam.engine.captioning.references import ReferenceSet

        if _unwrap(self.module).config.references:
            self.references = ReferenceSet.from_pairs(train_data, source=f"{output_dir} training split")

    def trainable_parameters(self) -> list[nn.Parameter]:
        return _unwrap(self.module).trainable_parameters()

    def losses(
        self, module: nn.Module, views: list[MoleculeViews], descriptions: list[str], group_ids: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        from mvclam.engine.captioning.model import molecule_query_states

        captioner = _unwrap(self.module)
        contexts = self.contexts(captioner.config, views)
        query_states = None
        if captioner.config.soft_prompt:
            device = next(self.mvclam.parameters()).device
            with torch.no_grad():
                query_states = molecule_query_states(self.mvclam, collate_views(views).to(device))
        loss = module(query_states, descriptions, contexts)  # through the (DDP) wrapper so gradients sync
        return {"loss": loss, "captioning": loss}

    def contexts(self, config, views: list[MoleculeViews]) -> list | None:
        """The prompts' SMILES and references of a batch (None when the captioner uses neither)."""
        from mvclam.engine.captioning.model import prompt_contexts

        return prompt_contexts(config, views, self.references) if config.uses_context else None

    def save(self, directory: Path, dtype: torch.dtype) -> None:
        from mvclam.engine.captioning.checkpoint import save_captioner

        self.mvclam.save_pretrained(directory, weights_dtype=dtype)
        captioner = _unwrap(self.module)
        captioner.trained = True
        saved = save_captioner(captioner, directory, weights_dtype=dtype)
        if self.references is not None and not captioner.config.reference_set:
            self.references.save(saved)  # beside the captioner: load_captioning finds it there

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
    apply_loss_overrides(model, config.model_overrides)
    return model


def apply_loss_overrides(model: MVCLAM, overrides: list[str]) -> None:
    """Loss settings of a model that continues from a checkpoint (e.g. without the matching loss);
    the architecture comes from the checkpoint, so no other override applies."""
    not_loss = [item for item in overrides if not item.strip().startswith("loss.")]
    if not_loss:
        raise ValueError(
            f"with init_from only loss.* overrides apply (the checkpoint fixes the rest): {not_loss}"
        )
    if overrides:
        data = apply_overrides(model.config.to_dict(), overrides)
        model.config.loss = MVCLAMConfig.from_dict(data).loss


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
        return Stage1Task(
            model,
            text_tower=config.text_tower,
            text_negatives=config.text_negatives,
            molecule_queue=config.molecule_queue,
            seed=config.seed,
        )
    if config.trainable or config.text_tower != "train":
        raise ValueError(
            "trainable (like text_tower) applies to stage1; stage 2 trains its projector and LoRA only"
        )
    if config.stage == "stage2":
        if not config.init_from:
            raise ValueError("stage2 needs init_from: the stage-1 checkpoint whose query outputs it captions")
        return Stage2Task.from_checkpoint(config.init_from, config.captioner)
    raise ValueError(f"unknown stage '{config.stage}'; expected stage1 or stage2")


def load_split(data_dir: str | Path, split: str, kind: str) -> PairData:
    from mvclam.engine.data import PairDataset

    return PairDataset.load(Path(data_dir), split, kind=kind)
