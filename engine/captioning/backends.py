"""Generation backends behind one interface: prompt embeddings in, captions out.

* ``TransformersBackend``: ``generate(inputs_embeds=...)`` with KV cache on CPU or GPU; prompts of
  different lengths are left-padded with an attention mask (and position ids counted over real
  tokens), so a prompt gives the same greedy caption alone or inside a batch.
* ``VLLMBackend``: vLLM's offline ``LLM`` with ``enable_prompt_embeds=True`` over a merged HF
  directory written by ``export_merged_llm``. vLLM is imported lazily (it is a GPU-only extra).

Prompt embeddings are only accepted from trusted code in this process, and their shapes are
validated before they reach an engine (vLLM's prompt-embeds input is opt-in because of
CVE-2025-62164: never forward embeddings received from users).
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

if TYPE_CHECKING:
    from mvclam.engine.captioning.model import MoleculeCaptioner

PromptEmbeds = Sequence[torch.Tensor] | torch.Tensor


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 96
    num_beams: int = 1
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    length_penalty: float = 1.0
    seed: int | None = None  # sampling only

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.num_beams < 1:
            raise ValueError("max_new_tokens and num_beams must be positive")
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

    @abstractmethod
    def generate(self, prompt_embeds: PromptEmbeds, settings: GenerationSettings) -> list[str]: ...

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
    def generate(self, prompt_embeds: PromptEmbeds, settings: GenerationSettings) -> list[str]:
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
        # With inputs_embeds only, generate returns just the new tokens.
        return [text.strip() for text in self.tokenizer.batch_decode(output, skip_special_tokens=True)]


class VLLMBackend(CaptionBackend):
    """vLLM offline engine over a merged HF directory (see ``export_merged_llm``); GPU environments only."""

    name = "vllm"

    def __init__(
        self, model_dir: str | Path, hidden_size: int, max_prompt_length: int = 2048, **llm_kwargs: Any
    ):
        vllm = import_vllm()
        self.hidden_size = hidden_size
        self.max_prompt_length = max_prompt_length
        self._sampling_params = vllm.SamplingParams
        self.llm = vllm.LLM(model=str(model_dir), enable_prompt_embeds=True, **llm_kwargs)

    def generate(self, prompt_embeds: PromptEmbeds, settings: GenerationSettings) -> list[str]:
        embeds = validate_prompt_embeds(prompt_embeds, self.hidden_size, self.max_prompt_length)
        if settings.num_beams > 1:
            # vLLM's SamplingParams has no beam search, and LLM.beam_search takes token prompts only.
            raise NotImplementedError("the vllm backend supports greedy and sampling, not beam search")
        params = self._sampling_params(
            max_tokens=settings.max_new_tokens,
            temperature=settings.temperature if settings.do_sample else 0.0,
            top_p=settings.top_p,
            repetition_penalty=settings.repetition_penalty,
            seed=settings.seed,
        )
        outputs = self.llm.generate([{"prompt_embeds": e.detach().cpu()} for e in embeds], params)
        return [output.outputs[0].text.strip() for output in outputs]


def import_vllm() -> Any:
    try:
        import vllm
    except ImportError as exc:
        raise ImportError(
            "the vllm backend needs vLLM (`pip install 'mvclam[gpu]'` in a GPU environment); "
            "use the transformers backend on CPU"
        ) from exc
    return vllm


def export_merged_llm(
    captioner: MoleculeCaptioner, directory: str | Path, dtype: torch.dtype = torch.float32
) -> Path:
    """The LLM with its LoRA merged into the weights, as a plain HF directory (safetensors + config +
    tokenizer) that vLLM or ``AutoModelForCausalLM`` can load. The captioner itself is left untouched."""
    directory = Path(directory)
    merged = copy.deepcopy(captioner.llm).merge_and_unload()  # copy: merging writes into the base weights
    merged.to(dtype).save_pretrained(str(directory), safe_serialization=True)
    captioner.tokenizer.save_pretrained(str(directory))
    return directory
