"""Checkpoint directories: ``config.json`` + ``model.safetensors`` + ``vocab.txt``. No pickle anywhere.

Frozen tensors that are byte-identical to a pinned weight package (e.g. MiniLM's word embeddings,
47 MB) are stored as references — distribution, version, key and SHA-256 — instead of copies,
and are checked against the installed package when loaded. Modules that no loss trained (the
stage-1 LM head when the captioning loss is off) are left out and listed in the manifest: they
would only be initialisation noise, and the shipped checkpoint has a size budget. The tokenizer is
stored as its WordPiece vocabulary (the lower-casing BERT rules are fixed by the code).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from mvclam.engine.models.config import MVCLAMConfig
from mvclam.engine.models.pretrained import (
    MINILM_DISTRIBUTION,
    distribution_version,
    load_minilm_state,
    load_tokenizer,
    tensor_digest,
)

if TYPE_CHECKING:
    from mvclam.engine.models.mvclam import MVCLAM

CHECKPOINT_FORMAT = "mvclam-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
_PACKAGE_LOADERS = {MINILM_DISTRIBUTION: load_minilm_state}


class CheckpointError(RuntimeError):
    """A checkpoint directory is missing, malformed, or references weights that are not installed."""


def save_checkpoint(model: MVCLAM, directory: str | Path, weights_dtype: torch.dtype = torch.float32) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    parameters = dict(model.named_parameters())
    untrained = untrained_modules(model)
    state = {k: v for k, v in state.items() if not any(k.startswith(m + ".") for m in untrained)}

    references: dict[str, dict[str, str]] = {}
    package_states: dict[str, dict[str, torch.Tensor]] = {}
    for name, (distribution, key) in model.package_sources.items():
        if parameters[name].requires_grad:
            continue  # trained: it differs from the package, so it is stored
        if distribution not in package_states:
            package_states[distribution] = _PACKAGE_LOADERS[distribution]()
        digest = tensor_digest(state[name])
        if digest != tensor_digest(package_states[distribution][key]):
            continue
        references[name] = {
            "distribution": distribution,
            "version": distribution_version(distribution),
            "key": key,
            "sha256": digest,
        }
        del state[name]

    if weights_dtype != torch.float32:
        state = {k: v.to(weights_dtype) if v.is_floating_point() else v for k, v in state.items()}
    weights_path = directory / WEIGHTS_FILE
    save_file(state, str(weights_path), metadata={"format": CHECKPOINT_FORMAT})

    version_hash = hashlib.sha256(weights_path.read_bytes())
    for name in sorted(references):
        version_hash.update(references[name]["sha256"].encode())
    model.model_version = version_hash.hexdigest()[:12]
    manifest: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "model_name": model.config.name,
        "model_version": model.model_version,
        "weights_dtype": str(weights_dtype).removeprefix("torch."),
        "config": model.config.to_dict(),
        "referenced_tensors": references,
        "untrained_modules": untrained,
    }
    (directory / CONFIG_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    save_vocabulary(model.tokenizer, directory / "vocab.txt")
    return directory


def save_vocabulary(tokenizer, path: Path) -> None:
    """The WordPiece vocabulary, one token per line in id order (what BERT's vocab.txt is)."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    if [i for _, i in vocab] != list(range(len(vocab))):
        raise CheckpointError(
            "the tokenizer's ids are not contiguous: it is not a plain WordPiece vocabulary"
        )
    path.write_text("".join(token + "\n" for token, _ in vocab), encoding="utf-8")


def untrained_modules(model: MVCLAM) -> list[str]:
    """Modules no loss of this config trains (left at initialisation, so not worth storing)."""
    return ["lm_head"] if not model.config.loss.captioning_weight else []


def read_manifest(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory} is not an mvclam checkpoint: {CONFIG_FILE} is missing")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an mvclam checkpoint manifest")
    if manifest.get("format_version", 0) > CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format_version {manifest['format_version']}; upgrade mvclam to read it"
        )
    return manifest


@dataclass
class CheckpointContents:
    """What a checkpoint directory holds, before a model is built from it."""

    manifest: dict[str, Any]
    config: MVCLAMConfig
    tokenizer: Any  # None: the tokenizer of the pinned MiniLM package


def read_checkpoint(directory: str | Path) -> CheckpointContents:
    """The manifest, model config and tokenizer of `directory` (the weights follow in load_weights)."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    if (directory / "tokenizer.json").is_file():  # checkpoints written by earlier versions
        tokenizer = load_tokenizer(str(directory))
    elif (directory / "vocab.txt").is_file():
        tokenizer = load_tokenizer(str(directory / "vocab.txt"))
    else:
        tokenizer = None
    return CheckpointContents(manifest, MVCLAMConfig.from_dict(manifest["config"]), tokenizer)


def load_weights(model: MVCLAM, directory: str | Path, manifest: dict[str, Any]) -> None:
    """Fill `model` (built from the checkpoint's config) with its stored and referenced weights."""
    state = {
        k: v.float() if v.is_floating_point() else v
        for k, v in load_file(str(Path(directory) / WEIGHTS_FILE)).items()
    }
    package_states: dict[str, dict[str, torch.Tensor]] = {}
    for name, ref in manifest.get("referenced_tensors", {}).items():
        distribution = ref["distribution"]
        if distribution not in _PACKAGE_LOADERS:
            raise CheckpointError(f"{name} references unknown weight package '{distribution}'")
        if distribution not in package_states:
            package_states[distribution] = _PACKAGE_LOADERS[distribution]()
        tensor = package_states[distribution].get(ref["key"])
        if tensor is None or tensor_digest(tensor) != ref["sha256"]:
            raise CheckpointError(
                f"{name} must come from {distribution}=={ref['version']} (key {ref['key']}), but the installed "
                f"package ({distribution_version(distribution)}) does not hold an identical tensor"
            )
        state[name] = tensor
        model.package_sources[name] = (distribution, ref["key"])

    missing, unexpected = model.load_state_dict(state, strict=False)
    skipped = tuple(m + "." for m in manifest.get("untrained_modules", []))
    missing = [k for k in missing if not k.startswith(skipped)]  # stay at their initialisation
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    model.model_version = manifest["model_version"]
