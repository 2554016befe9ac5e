"""Inference façade: load a model once, embed views, SMILES and texts in batches.

Molecules are sorted by atom count before batching so each batch pads as little as possible;
the model is padding-invariant, so the order only changes speed, never the vectors.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from mvclam.engine.models.config import load_config
from mvclam.engine.models.mvclam import MVCLAM, MoleculeEmbeddings
from mvclam.engine.models.pretrained import resolve_checkpoint
from mvclam.engine.views import MoleculeViews, ViewResult, collate_views, compute_views_batch


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(
    checkpoint: str | Path | None = None,
    config: str | Path | None = None,
    overrides: list[str] | None = None,
    device: str | torch.device | None = None,
) -> MVCLAM:
    """A model in eval mode: from a checkpoint directory; with nothing given, the shipped trained
    checkpoint; else (``"fresh"``, a config or overrides) freshly initialised from a config."""
    directory = resolve_checkpoint(checkpoint, config, overrides)
    if directory is not None:
        model = MVCLAM.from_pretrained(directory)
    else:
        model = MVCLAM(load_config(config or "small", overrides))
    return model.to(device or default_device()).eval()


class MoleculeEmbedder:
    def __init__(self, model: MVCLAM, batch_size: int = 64, token_dtype: torch.dtype = torch.float32):
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        self.model = model.eval()
        self.batch_size = batch_size
        self.token_dtype = token_dtype

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def embed_views(self, views: Sequence[MoleculeViews]) -> MoleculeEmbeddings:
        """Embeddings for every view, in input order (tokens (M, 2K, D) and pooled (M, D), on the CPU)."""
        config = self.model.config
        tokens = torch.empty(
            len(views), config.num_molecule_tokens, config.embedding_dim, dtype=self.token_dtype
        )
        pooled = torch.empty(len(views), config.embedding_dim, dtype=self.token_dtype)
        order = np.argsort([v.num_atoms for v in views], kind="stable")
        for start in range(0, len(views), self.batch_size):
            index = torch.as_tensor(order[start : start + self.batch_size])
            batch = collate_views([views[i] for i in index.tolist()]).to(self.device)
            out = self.model.embed_molecules(batch, out_dtype=self.token_dtype)
            tokens[index] = out.tokens.cpu()
            pooled[index] = out.pooled.cpu()
        return MoleculeEmbeddings(tokens=tokens, pooled=pooled)

    def embed_smiles(self, smiles: Sequence[str | None]) -> tuple[list[ViewResult], MoleculeEmbeddings]:
        """Per-row view results (errors included, never raises for a bad row) and embeddings of the rows that worked."""
        results = compute_views_batch(list(smiles), self.model.config.views)
        good = [r.views for r in results if r.views is not None]
        return results, self.embed_views(good)

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        chunks = [
            self.model.embed_texts(list(texts[start : start + self.batch_size])).cpu()
            for start in range(0, len(texts), self.batch_size)
        ]
        if not chunks:
            return torch.empty(0, self.model.config.embedding_dim)
        return torch.cat(chunks)
