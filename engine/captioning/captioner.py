"""Captioning façade: MV-CLAM views → MQ-Former query outputs → soft prompts → backend → captions."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mvclam.engine.captioning.backends import CaptionBackend, GenerationSettings, TransformersBackend
from mvclam.engine.captioning.checkpoint import captioner_dir, has_captioner, load_captioner
from mvclam.engine.captioning.model import (
    CaptionerConfig,
    MoleculeCaptioner,
    PromptContext,
    molecule_query_states,
    prompt_contexts,
)
from mvclam.engine.captioning.references import Reference, ReferenceSet, resolve_reference_set
from mvclam.engine.models.mvclam import MVCLAM
from mvclam.engine.views import MoleculeViews, collate_views, compute_views_batch

UNTRAINED_WARNING = (
    "captions come from an UNTRAINED captioner (no trained captioner/ in the checkpoint): "
    "the text is not a description of the molecule"
)


@dataclass
class CaptionResult:
    caption: str | None = None
    error: str | None = None
    references: tuple[Reference, ...] = ()  # what the prompt cited: the caption's provenance

    @property
    def ok(self) -> bool:
        return self.error is None

    def provenance(self) -> list[dict[str, object]]:
        return [r.provenance() for r in self.references]


class Captioner:
    def __init__(
        self,
        mvclam: MVCLAM,
        captioner: MoleculeCaptioner,
        backend: CaptionBackend | None = None,
        batch_size: int = 16,
        settings: GenerationSettings | None = None,
        references: ReferenceSet | None = None,
    ):
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        if captioner.config.references and references is None:
            raise ValueError(
                f"this captioner cites {captioner.config.references} references per molecule: give a ReferenceSet"
            )
        self.mvclam = mvclam.eval()
        self.captioner = captioner.eval()
        self.backend = backend or TransformersBackend.from_captioner(captioner)
        self.batch_size = batch_size
        self.settings = settings or GenerationSettings()
        self.references = references if captioner.config.references else None

    @property
    def trained(self) -> bool:
        return self.captioner.trained

    def contexts(self, views: Sequence[MoleculeViews]) -> list[PromptContext]:
        return prompt_contexts(self.captioner.config, views, self.references)

    @torch.inference_mode()
    def _prompts(
        self, views: Sequence[MoleculeViews], contexts: Sequence[PromptContext]
    ) -> list[torch.Tensor]:
        query_states = None
        if self.captioner.config.soft_prompt:
            device = next(self.mvclam.parameters()).device
            query_states = molecule_query_states(self.mvclam, collate_views(views).to(device))
        return self.captioner.prompts(query_states, contexts)

    def prompt_embeds(self, views: Sequence[MoleculeViews]) -> list[torch.Tensor]:
        """One (P_i, H_llm) generation prompt per view (soft tokens, SMILES, references)."""
        return self._prompts(views, self.contexts(views))

    def describe_views(
        self, views: Sequence[MoleculeViews], settings: GenerationSettings | None = None
    ) -> list[CaptionResult]:
        """One caption per view with the references its prompt cited, in input order. Batches are
        formed by atom count so the encoders pad little."""
        settings = settings or self.settings
        results: list[CaptionResult] = [CaptionResult() for _ in views]
        order = np.argsort([v.num_atoms for v in views], kind="stable").tolist()
        for start in range(0, len(order), self.batch_size):
            index = order[start : start + self.batch_size]
            batch = [views[i] for i in index]
            contexts = self.contexts(batch)
            captions = self.backend.generate(self._prompts(batch, contexts), settings)
            for i, caption, context in zip(index, captions, contexts, strict=True):
                results[i] = CaptionResult(caption=caption, references=context.references)
        return results

    def caption_views(
        self, views: Sequence[MoleculeViews], settings: GenerationSettings | None = None
    ) -> list[str]:
        """One caption per view, in input order."""
        return [r.caption or "" for r in self.describe_views(views, settings)]

    def caption_smiles(
        self, smiles: Sequence[str | None], settings: GenerationSettings | None = None
    ) -> list[CaptionResult]:
        """One result per row; rows whose views fail carry the view error, never raise."""
        results = compute_views_batch(list(smiles), self.mvclam.config.views)
        good = [i for i, r in enumerate(results) if r.views is not None]
        described = self.describe_views([results[i].views for i in good], settings)
        out = [
            CaptionResult(error=f"{r.error.code.value}: {r.error.reason}") if r.error else CaptionResult()
            for r in results
        ]
        for i, result in zip(good, described, strict=True):
            out[i] = result
        return out


def load_captioning(
    checkpoint: str | Path | None = None,
    config: str | Path | None = None,
    overrides: list[str] | None = None,
    batch_size: int = 16,
    settings: GenerationSettings | None = None,
    device: str | torch.device | None = None,
    references: ReferenceSet | None = None,
) -> Captioner:
    """MV-CLAM (checkpoint or fresh from a config) + its trained captioner, or an untrained one with a
    warning. A captioner that cites references uses `references`, else the set it was trained with
    (shipped under checkpoints/reference-sets)."""
    from mvclam.engine.embedder import load_model
    from mvclam.engine.models.pretrained import resolve_checkpoint

    checkpoint = resolve_checkpoint(checkpoint, config, overrides)
    mvclam = load_model(checkpoint if checkpoint is not None else "fresh", config, overrides, device)
    directory = None
    if has_captioner(checkpoint):
        assert checkpoint is not None
        captioner = load_captioner(checkpoint)
        directory = captioner_dir(checkpoint)
    else:
        captioner = MoleculeCaptioner(CaptionerConfig.for_model(mvclam))
    if not captioner.trained:
        warnings.warn(UNTRAINED_WARNING, UserWarning, stacklevel=2)
    captioner.to(next(mvclam.parameters()).device)
    if captioner.config.references and references is None:
        references = ReferenceSet.load(resolve_reference_set(captioner.config.reference_set, directory))
    return Captioner(mvclam, captioner, batch_size=batch_size, settings=settings, references=references)
