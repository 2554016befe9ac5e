"""Captioning façade: MV-CLAM views → MQ-Former query outputs → soft prompts → backend → captions."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mvclam.engine.captioning.backends import CaptionBackend, GenerationSettings, TransformersBackend
from mvclam.engine.captioning.checkpoint import has_captioner, load_captioner
from mvclam.engine.captioning.model import CaptionerConfig, MoleculeCaptioner, molecule_query_states
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

    @property
    def ok(self) -> bool:
        return self.error is None


class Captioner:
    def __init__(
        self,
        mvclam: MVCLAM,
        captioner: MoleculeCaptioner,
        backend: CaptionBackend | None = None,
        batch_size: int = 16,
        settings: GenerationSettings | None = None,
    ):
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        self.mvclam = mvclam.eval()
        self.captioner = captioner.eval()
        self.backend = backend or TransformersBackend.from_captioner(captioner)
        self.batch_size = batch_size
        self.settings = settings or GenerationSettings()

    @property
    def trained(self) -> bool:
        return self.captioner.trained

    @torch.inference_mode()
    def prompt_embeds(self, views: Sequence[MoleculeViews]) -> torch.Tensor:
        """(B, P, H_llm) generation prompts of a batch of views."""
        device = next(self.mvclam.parameters()).device
        query_states = molecule_query_states(self.mvclam, collate_views(views).to(device))
        return self.captioner.prompt_embeds(query_states)

    def caption_views(
        self, views: Sequence[MoleculeViews], settings: GenerationSettings | None = None
    ) -> list[str]:
        """One caption per view, in input order. Batches are formed by atom count so the encoders pad little."""
        settings = settings or self.settings
        captions: list[str] = [""] * len(views)
        order = np.argsort([v.num_atoms for v in views], kind="stable").tolist()
        for start in range(0, len(order), self.batch_size):
            index = order[start : start + self.batch_size]
            embeds = self.prompt_embeds([views[i] for i in index])
            for i, caption in zip(index, self.backend.generate(list(embeds), settings), strict=True):
                captions[i] = caption
        return captions

    def caption_smiles(
        self, smiles: Sequence[str | None], settings: GenerationSettings | None = None
    ) -> list[CaptionResult]:
        """One result per row; rows whose views fail carry the view error, never raise."""
        results = compute_views_batch(list(smiles), self.mvclam.config.views)
        good = [i for i, r in enumerate(results) if r.views is not None]
        captions = self.caption_views([results[i].views for i in good], settings)
        out = [
            CaptionResult(error=f"{r.error.code.value}: {r.error.reason}") if r.error else CaptionResult()
            for r in results
        ]
        for i, caption in zip(good, captions, strict=True):
            out[i] = CaptionResult(caption=caption)
        return out


def load_captioning(
    checkpoint: str | Path | None = None,
    config: str | Path | None = None,
    overrides: list[str] | None = None,
    batch_size: int = 16,
    settings: GenerationSettings | None = None,
    device: str | torch.device | None = None,
) -> Captioner:
    """MV-CLAM (checkpoint or fresh from a config) + its trained captioner, or an untrained one with a warning."""
    from mvclam.engine.embedder import load_model
    from mvclam.engine.models.pretrained import resolve_checkpoint

    checkpoint = resolve_checkpoint(checkpoint, config, overrides)
    mvclam = load_model(checkpoint if checkpoint is not None else "fresh", config, overrides, device)
    if has_captioner(checkpoint):
        assert checkpoint is not None
        captioner = load_captioner(checkpoint)
    else:
        captioner = MoleculeCaptioner(CaptionerConfig.for_model(mvclam))
    if not captioner.trained:
        warnings.warn(UNTRAINED_WARNING, UserWarning, stacklevel=2)
    captioner.to(next(mvclam.parameters()).device)
    return Captioner(mvclam, captioner, batch_size=batch_size, settings=settings)
