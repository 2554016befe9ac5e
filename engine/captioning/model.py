"""Stage 2 of MV-CLAM: the MQ-Former's query outputs as soft-prompt tokens of a LoRA-tuned chat LLM.

Layout of one training sequence (SmolLM2-Instruct chat template; ``<mol>`` = the 2K projected
query outputs)::

    <|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n<mol>\\n{instruction}<|im_end|>\\n
    <|im_start|>assistant\\n{description}<|im_end|>

Only ``{description}<|im_end|>`` is supervised (the end-of-turn token teaches the model to stop);
labels are -100 on the prompt text, the soft tokens and padding. The prompt has the same length for
every molecule, so only the descriptions are padded.

Trainer API (the loop, Ray Train and resume live in jobs/)::

    captioner = MoleculeCaptioner(CaptionerConfig.for_model(mvclam))
    optimizer = torch.optim.AdamW(captioner.trainable_parameters(), lr=1e-4)
    loss = captioner.loss_from_views(mvclam, views, descriptions)   # or captioner(query_states, descriptions)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from mvclam.engine.captioning.llm import LLMSource, LoadedLLM, load_llm

if TYPE_CHECKING:
    from mvclam.engine.models.mvclam import MVCLAM
    from mvclam.engine.views import ViewBatch

IGNORE_INDEX = -100  # the label value cross-entropy skips
_SOFT_PROMPT_MARK = "\x00MOLECULE\x00"  # split point of the rendered template; never in real text
LORA_TARGETS = {
    "attention": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "query-value": ["q_proj", "v_proj"],  # LoRA's original choice; the smallest adapter
    "all-linear": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}


@dataclass
class CaptionerConfig:
    qformer_hidden_size: int = 384
    num_query_tokens: int = 32  # 2K: the soft-prompt length
    system_prompt: str = "You are an expert chemist who describes molecules accurately."
    instruction: str = "Describe this molecule."
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: str = "attention"  # a LORA_TARGETS key
    max_description_tokens: int = 256
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes kept in the checkpoint

    def __post_init__(self) -> None:
        if self.lora_targets not in LORA_TARGETS:
            raise ValueError(f"lora_targets must be one of {sorted(LORA_TARGETS)}, got '{self.lora_targets}'")
        if self.lora_r < 1 or self.num_query_tokens < 1 or self.max_description_tokens < 1:
            raise ValueError("lora_r, num_query_tokens and max_description_tokens must be positive")

    @classmethod
    def for_model(cls, mvclam: MVCLAM, **overrides: Any) -> CaptionerConfig:
        """Sizes taken from an MV-CLAM model (Q-Former width, 2K query tokens)."""
        return cls(
            qformer_hidden_size=mvclam.config.qformer.hidden_size,
            num_query_tokens=mvclam.config.num_molecule_tokens,
            **overrides,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CaptionerConfig:
        return cls(**data)


@dataclass
class TrainingInputs:
    inputs_embeds: torch.Tensor  # (B, L, H)
    attention_mask: torch.Tensor  # (B, L) long, 0 at padding
    position_ids: torch.Tensor  # (B, L) long, counted over real tokens only
    labels: torch.Tensor  # (B, L) long, IGNORE_INDEX outside the descriptions


def molecule_query_states(mvclam: MVCLAM, views: ViewBatch) -> torch.Tensor:
    """(B, 2K, H_q) MQ-Former query outputs of a batch of views (with grad if the caller allows it)."""
    states, masks = mvclam.encode_views(views)
    query_states, _ = mvclam.qformer("molecule", states, masks)
    assert query_states is not None
    return query_states


class MoleculeCaptioner(nn.Module):
    """Linear projector (H_q → H_llm) + LoRA-wrapped causal LLM; the base LLM weights stay frozen."""

    def __init__(self, config: CaptionerConfig, llm: LoadedLLM | None = None):
        super().__init__()
        self.config = config
        llm = llm or load_llm()
        self.tokenizer = llm.tokenizer
        self.llm_source: LLMSource = llm.source
        base = llm.model.requires_grad_(False)
        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=LORA_TARGETS[config.lora_targets],
            bias="none",
            task_type="CAUSAL_LM",
        )
        self.llm = get_peft_model(base, lora)
        self.llm_hidden_size = base.config.hidden_size
        self.projector = nn.Linear(config.qformer_hidden_size, self.llm_hidden_size)
        self.eos_token_id = self.tokenizer.convert_tokens_to_ids(self.tokenizer.eos_token)
        self.pad_token_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        prefix, suffix = self._render_prompt()
        self.register_buffer("prefix_ids", torch.tensor(prefix, dtype=torch.long), persistent=False)
        self.register_buffer("suffix_ids", torch.tensor(suffix, dtype=torch.long), persistent=False)
        self.trained = False  # set by the stage-2 trainer before saving; the CLI warns when False
        self.version = "untrained"  # content hash once saved or loaded (checkpoint.py)

    def _render_prompt(self) -> tuple[list[int], list[int]]:
        messages = [
            {"role": "system", "content": self.config.system_prompt},
            {"role": "user", "content": f"{_SOFT_PROMPT_MARK}\n{self.config.instruction}"},
        ]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prefix, suffix = text.split(_SOFT_PROMPT_MARK)
        encode = self.tokenizer
        return (
            encode(prefix, add_special_tokens=False)["input_ids"],
            encode(suffix, add_special_tokens=False)["input_ids"],
        )

    @property
    def prompt_length(self) -> int:
        return len(self.prefix_ids) + self.config.num_query_tokens + len(self.suffix_ids)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The projector and the LoRA matrices (everything else is frozen)."""
        return [p for p in self.parameters() if p.requires_grad]

    def _embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        return self.llm.get_input_embeddings()(ids)

    # ----------------------------------------------------------------------------- prompts
    def prompt_embeds(self, query_states: torch.Tensor) -> torch.Tensor:
        """(B, 2K, H_q) query outputs → (B, P, H_llm) embeddings of the whole chat prompt, up to the
        assistant turn: the generation input."""
        if query_states.ndim != 3 or query_states.shape[1:] != (
            self.config.num_query_tokens,
            self.config.qformer_hidden_size,
        ):
            raise ValueError(
                f"query_states must be (B, {self.config.num_query_tokens}, {self.config.qformer_hidden_size}), "
                f"got {tuple(query_states.shape)}"
            )
        batch = query_states.shape[0]
        soft = self.projector(query_states.to(self.projector.weight.dtype))
        prefix = self._embed_ids(self.prefix_ids).expand(batch, -1, -1)
        suffix = self._embed_ids(self.suffix_ids).expand(batch, -1, -1)
        return torch.cat([prefix, soft, suffix], dim=1)

    def tokenize_descriptions(self, descriptions: Sequence[str]) -> list[list[int]]:
        """Token ids of each description (truncated) followed by the end-of-turn token."""
        limit = self.config.max_description_tokens
        encoded = self.tokenizer(list(descriptions), add_special_tokens=False)["input_ids"]
        return [[*ids[:limit], self.eos_token_id] for ids in encoded]

    def build_training_inputs(
        self, query_states: torch.Tensor, descriptions: Sequence[str], padding_side: str = "right"
    ) -> TrainingInputs:
        """Per row ``[prompt][description][eos]``, padded on ``padding_side``; position ids count real
        tokens only, so both sides give the same loss."""
        if len(descriptions) != query_states.shape[0]:
            raise ValueError(f"{query_states.shape[0]} molecules but {len(descriptions)} descriptions")
        if padding_side not in {"left", "right"}:
            raise ValueError("padding_side must be 'left' or 'right'")
        device = self.projector.weight.device
        prompt = self.prompt_embeds(query_states.to(device))
        prompt_len, hidden = prompt.shape[1:]
        targets = self.tokenize_descriptions(descriptions)
        target_ids = torch.tensor([i for t in targets for i in t], dtype=torch.long, device=device)
        target_embeds = self._embed_ids(target_ids).split([len(t) for t in targets])
        width = prompt_len + max(len(t) for t in targets)

        rows, masks, labels = [], [], []
        for row, (target, embeds) in enumerate(zip(targets, target_embeds, strict=True)):
            n_pad = width - prompt_len - len(target)
            pad = prompt.new_zeros(n_pad, hidden)
            row_labels = torch.tensor([IGNORE_INDEX] * prompt_len + target, dtype=torch.long, device=device)
            pad_labels = torch.full((n_pad,), IGNORE_INDEX, dtype=torch.long, device=device)
            ones = torch.ones(width - n_pad, dtype=torch.long, device=device)
            zeros = torch.zeros(n_pad, dtype=torch.long, device=device)
            if padding_side == "right":
                rows.append(torch.cat([prompt[row], embeds, pad]))
                masks.append(torch.cat([ones, zeros]))
                labels.append(torch.cat([row_labels, pad_labels]))
            else:
                rows.append(torch.cat([pad, prompt[row], embeds]))
                masks.append(torch.cat([zeros, ones]))
                labels.append(torch.cat([pad_labels, row_labels]))
        mask = torch.stack(masks)
        position_ids = (mask.cumsum(dim=1) - 1).clamp(min=0)
        return TrainingInputs(torch.stack(rows), mask, position_ids, torch.stack(labels))

    # ----------------------------------------------------------------------------- training
    def forward(self, query_states: torch.Tensor, descriptions: Sequence[str]) -> torch.Tensor:
        """Mean cross-entropy over the description tokens (+ end-of-turn) of a batch."""
        inputs = self.build_training_inputs(query_states, descriptions)
        out = self.llm(
            inputs_embeds=inputs.inputs_embeds,
            attention_mask=inputs.attention_mask,
            position_ids=inputs.position_ids,
            labels=inputs.labels,
            use_cache=False,
        )
        return out.loss

    def loss_from_views(
        self, mvclam: MVCLAM, views: ViewBatch, descriptions: Sequence[str], train_molecule: bool = False
    ) -> torch.Tensor:
        """Stage-2 loss from views. The molecule side is frozen by default (no graph is kept through
        it); ``train_molecule=True`` back-propagates into the encoders and the MQ-Former as well —
        add ``mvclam.parameters()`` to the optimizer then."""
        if train_molecule:
            query_states = molecule_query_states(mvclam, views)
        else:
            with torch.no_grad():
                query_states = molecule_query_states(mvclam, views)
        return self(query_states, descriptions)
