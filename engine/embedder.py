"""Inference façade: load a model once, embed views, SMILES and texts in batches.

Molecules are sorted by atom count before batching so each batch pads as little as possible.
The model is padding-invariant only up to float rounding (~1e-7): how long a batch is padded,
and on several threads how many rows it has, change the order of the sums in attention and
matmuls. With `batch_invariant=True` (the embed job) a molecule's vectors depend only on the
molecule, bit for bit: it is padded to its own length bucket (the next multiple of PAD_QUANTUM
atoms) and encoded in a forward pass of exactly GROUP_ROWS molecules of that bucket (the last
pass of a bucket filled up with copies, whose output is dropped). A resumed job, whose batches
hold other molecules than the clean run's, then stores the same tokens. It costs ~7-10% of
encoder throughput on a CPU (docs/reliability.md, bug 5).
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


PAD_QUANTUM = 16  # atoms: batch-invariant padding rounds a molecule's length up to a multiple
GROUP_ROWS = 8  # molecules per forward pass in batch-invariant mode


def padded_length(num_atoms: int, quantum: int = PAD_QUANTUM) -> int:
    """The length a molecule of `num_atoms` atoms is padded to in batch-invariant mode."""
    return max(quantum, -(-num_atoms // quantum) * quantum)


def invariant_groups(sizes: Sequence[int], rows: int = GROUP_ROWS) -> list[tuple[int, list[int]]]:
    """(pad length, at most `rows` indices into `sizes`) per forward pass in batch-invariant mode:
    molecules of one length bucket, in index order."""
    buckets: dict[int, list[int]] = {}
    for i, size in enumerate(sizes):
        buckets.setdefault(padded_length(int(size)), []).append(i)
    return [
        (length, buckets[length][start : start + rows])
        for length in sorted(buckets)
        for start in range(0, len(buckets[length]), rows)
    ]


class MoleculeEmbedder:
    def __init__(
        self,
        model: MVCLAM,
        batch_size: int = 64,
        token_dtype: torch.dtype = torch.float32,
        batch_invariant: bool = False,
    ):
        """`batch_invariant`: a molecule's vectors do not depend on the other molecules embedded
        with it (see the module docstring); `batch_size` then does not apply."""
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        self.model = model.eval()
        self.batch_size = batch_size
        self.token_dtype = token_dtype
        self.batch_invariant = batch_invariant

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
        for pad_to, index in self._batches([v.num_atoms for v in views]):
            batch_views = [views[i] for i in index]
            if self.batch_invariant:  # always GROUP_ROWS rows: filler copies, their output dropped
                batch_views += [batch_views[-1]] * (GROUP_ROWS - len(index))
            batch = collate_views(batch_views, pad_to=pad_to).to(self.device)
            out = self.model.embed_molecules(batch, out_dtype=self.token_dtype)
            tokens[index] = out.tokens[: len(index)].cpu()
            pooled[index] = out.pooled[: len(index)].cpu()
        return MoleculeEmbeddings(tokens=tokens, pooled=pooled)

    def _batches(self, sizes: list[int]) -> list[tuple[int | None, list[int]]]:
        """(pad length, None: the batch's largest molecule; row indices) per forward pass."""
        if self.batch_invariant:
            return [(length, group) for length, group in invariant_groups(sizes)]
        order = np.argsort(sizes, kind="stable").tolist()
        return [
            (None, order[start : start + self.batch_size]) for start in range(0, len(sizes), self.batch_size)
        ]

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
