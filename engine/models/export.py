"""Shipping copies of checkpoints (`mvclam export`)."""

from __future__ import annotations

from pathlib import Path

import torch

from mvclam.engine.models.mvclam import MVCLAM


def export_checkpoint(
    source: str | Path, target: str | Path, weights_dtype: torch.dtype = torch.float16
) -> Path:
    """A compact copy for shipping: weights in `weights_dtype`, and the position-embedding rows
    past `max_text_length` dropped (texts are truncated there and query tokens have no positions,
    so those rows are never read). Embeddings of the copy equal the source's up to the dtype."""
    model = MVCLAM.from_pretrained(source)
    length = model.config.max_text_length
    embedding = model.qformer.embeddings.position_embeddings
    if embedding.num_embeddings > length:
        trimmed = torch.nn.Embedding(length, embedding.embedding_dim)
        with torch.no_grad():
            trimmed.weight.copy_(embedding.weight[:length])
        model.qformer.embeddings.position_embeddings = trimmed
        model.config.qformer.max_position_embeddings = length
    return model.save_pretrained(target, weights_dtype=weights_dtype)
