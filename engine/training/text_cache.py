"""A frozen, cached text tower for stage 1 (LiT-style) and the negatives it makes cheap.

With ``text_tower: frozen`` the Q-Former's text path (word/position embeddings, the shared
self-attention and the text FFN) stops training, so every description's [CLS] state is a constant:
it is computed once per run and stored in the run directory. A step then costs only the molecule
branch, and any number of training texts can serve as negatives (their trainable text projection is
applied to the cached states each step). The query path keeps its own FFN, cross-attentions and
query tokens trainable; the shared self-attention is frozen for it too (it is one set of weights).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from mvclam.engine.models import MVCLAM

CACHE_FILE = "text_states.safetensors"
CACHE_META = "text_states.json"
# Everything the text branch reads for a molecule-free pass; the query FFN/cross-attention stay trainable.
TEXT_PATH_PREFIXES = ("qformer.embeddings.",)
TEXT_PATH_PARTS = (".attention.", ".intermediate.", ".output.")


def freeze_text_tower(model: MVCLAM) -> list[str]:
    """Freeze the Q-Former's text path; returns the frozen parameter names."""
    frozen = []
    for name, parameter in model.named_parameters():
        in_layers = name.startswith("qformer.layer.") and ".crossattention." not in name
        if name.startswith(TEXT_PATH_PREFIXES) or (in_layers and any(p in name for p in TEXT_PATH_PARTS)):
            parameter.requires_grad_(False)
            frozen.append(name)
    return frozen


def _cache_key(model: MVCLAM, texts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    digest.update(f"{model.model_version}:{model.config.max_text_length}:".encode())
    # The frozen weights themselves (cheap: a sum per tensor), so a changed init never reuses a cache.
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            digest.update(f"{name}={float(parameter.detach().double().sum()):.10e};".encode())
    for text in texts:
        digest.update(text.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


class TextStateCache:
    """Row-aligned [CLS] states of a list of distinct texts; look up by text."""

    def __init__(self, texts: list[str], states: torch.Tensor):
        self.texts = texts
        self.states = states
        self.index = {text: row for row, text in enumerate(texts)}

    def rows(self, texts: Sequence[str]) -> torch.Tensor:
        return torch.tensor([self.index[t] for t in texts], dtype=torch.long)

    def lookup(self, texts: Sequence[str]) -> torch.Tensor:
        return self.states[self.rows(texts)]

    @classmethod
    @torch.no_grad()
    def build(
        cls,
        model: MVCLAM,
        texts: Sequence[str],
        directory: Path | None = None,
        batch_size: int = 64,
        log=print,
    ) -> TextStateCache:
        """States of the distinct `texts`, read from `directory` when its key matches, else computed
        (in eval mode, longest first so batches pad little) and written there."""
        distinct = list(dict.fromkeys(texts))
        key = _cache_key(model, distinct)
        if directory is not None and (directory / CACHE_META).exists():
            meta = json.loads((directory / CACHE_META).read_text())
            if meta.get("key") == key:
                states = load_file(str(directory / CACHE_FILE))["states"]
                log(f"text cache: {len(distinct)} states read from {directory / CACHE_FILE}")
                return cls(distinct, states)
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        lengths = [len(model.tokenizer.tokenize(t)) for t in distinct]
        order = np.argsort(lengths)[::-1]
        states = torch.empty(len(distinct), model.config.qformer.hidden_size)
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            ids, mask = model.tokenize([distinct[i] for i in index])
            states[torch.as_tensor(index.copy())] = (
                model.text_cls_states(ids.to(device), mask.to(device)).float().cpu()
            )
        model.train(was_training)
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            save_file({"states": states.contiguous()}, str(directory / CACHE_FILE))
            (directory / CACHE_META).write_text(json.dumps({"key": key, "texts": len(distinct)}) + "\n")
        log(f"text cache: {len(distinct)} states computed")
        return cls(distinct, states)


class MoleculeQueue:
    """FIFO of earlier steps' (detached) molecule tokens: extra candidates for each text."""

    def __init__(self, size: int):
        self.size = size
        self.tokens: torch.Tensor | None = None
        self.groups: torch.Tensor | None = None

    def push(self, tokens: torch.Tensor, groups: torch.Tensor) -> None:
        if self.size <= 0:
            return
        tokens, groups = tokens.detach(), groups.detach()
        if self.tokens is None:
            self.tokens, self.groups = tokens, groups
        else:
            assert self.groups is not None
            self.tokens = torch.cat([tokens, self.tokens])[: self.size]
            self.groups = torch.cat([groups, self.groups])[: self.size]
        self.tokens, self.groups = self.tokens[: self.size], self.groups[: self.size]
