"""Stage 2 of MV-CLAM: the MQ-Former's query outputs as soft-prompt tokens of a LoRA-tuned chat LLM.

Layout of one training sequence (SmolLM2-Instruct chat template; ``<mol>`` = the 2K projected
query outputs; ``{context}`` = what the catalog already knows, see below)::

    <|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n<mol>{context}\\n{instruction}<|im_end|>\\n
    <|im_start|>assistant\\n{description}<|im_end|>

Only ``{description}<|im_end|>`` is supervised (the end-of-turn token teaches the model to stop);
labels are -100 on the prompt text, the soft tokens and padding.

Retrieval-augmented prompts (stage 2 with references): ``{context}`` holds the molecule's SMILES cut
to ``smiles_chars`` characters (as MolCA and the MV-CLAM reference code do) and the descriptions of
its ``references`` most similar already-described molecules, each cut to ``reference_tokens`` LLM
tokens and preceded by its Tanimoto similarity::

    \\nSMILES: CC(=O)Oc1ccccc1C(=O)O
    \\nDescriptions of similar molecules:
    \\n[1] (similarity 0.82) The molecule is a member of the class of benzoic acids ...

``soft_prompt=False`` leaves ``<mol>`` out (the "references without soft prompt" ablation). With no
SMILES and no references the prompt has the same length for every molecule (``prompt_embeds``, one
tensor); otherwise ``prompts`` gives one tensor per molecule.

Trainer API (the loop, Ray Train and resume live in jobs/)::

    captioner = MoleculeCaptioner(CaptionerConfig.for_model(mvclam))
    optimizer = torch.optim.AdamW(captioner.trainable_parameters(), lr=1e-4)
    loss = captioner.loss_from_views(mvclam, views, descriptions)   # or captioner(query_states, descriptions)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from mvclam.engine.captioning.llm import LLMSource, LoadedLLM, load_llm
from mvclam.engine.captioning.references import Reference

if TYPE_CHECKING:
    from mvclam.engine.captioning.references import ReferenceSet
    from mvclam.engine.models.mvclam import MVCLAM
    from mvclam.engine.views import MoleculeViews, ViewBatch

IGNORE_INDEX = -100  # the label value cross-entropy skips
_SOFT_PROMPT_MARK = "\x00MOLECULE\x00"  # split points of the rendered template; never in real text
_CONTEXT_MARK = "\x00CONTEXT\x00"
REFERENCES_HEADER = "\nDescriptions of similar molecules:"
LORA_TARGETS = {
    "attention": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "query-value": ["q_proj", "v_proj"],  # LoRA's original choice; the smallest adapter
    "all-linear": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}


WEIGHT_FIELDS = frozenset({"qformer_hidden_size", "num_query_tokens", "lora_r", "lora_alpha", "lora_targets"})


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
    soft_prompt: bool = True  # the MQ-Former tokens in the prompt (False: an ablation)
    smiles_chars: int = 0  # the SMILES in the prompt, cut to this many characters (0: none)
    references: int = 0  # k described neighbours cited in the prompt (0: none)
    reference_tokens: int = 48  # each neighbour's description cut to this many LLM tokens
    reference_set: str = ""  # the set trained with: a name under checkpoints/reference-sets, or a path
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes kept in the checkpoint

    def __post_init__(self) -> None:
        if self.lora_targets not in LORA_TARGETS:
            raise ValueError(f"lora_targets must be one of {sorted(LORA_TARGETS)}, got '{self.lora_targets}'")
        if self.lora_r < 1 or self.num_query_tokens < 1 or self.max_description_tokens < 1:
            raise ValueError("lora_r, num_query_tokens and max_description_tokens must be positive")
        if min(self.smiles_chars, self.references, self.reference_tokens) < 0:
            raise ValueError("smiles_chars, references and reference_tokens must not be negative")
        if not (self.soft_prompt or self.smiles_chars or self.references):
            raise ValueError("the prompt needs the soft prompt, the SMILES or references")

    @property
    def uses_context(self) -> bool:
        """True when prompts differ in length per molecule (SMILES or references in them)."""
        return bool(self.smiles_chars or self.references)

    @classmethod
    def for_model(cls, mvclam: MVCLAM, **overrides: Any) -> CaptionerConfig:
        """Sizes taken from an MV-CLAM model (Q-Former width, 2K query tokens)."""
        return cls(
            qformer_hidden_size=mvclam.config.qformer.hidden_size,
            num_query_tokens=mvclam.config.num_molecule_tokens,
            **overrides,
        )

    def with_prompt(self, **changes: Any) -> CaptionerConfig:
        """The same weights with another prompt or target length (to continue training a captioner).

        Fields that shape or scale the weights (sizes, LoRA rank, alpha, targets) cannot change: the
        stored adapter would no longer mean the same thing.
        """
        fixed = {k: v for k, v in changes.items() if k in WEIGHT_FIELDS and v != getattr(self, k)}
        if fixed:
            raise ValueError(f"cannot change {sorted(fixed)} of a trained captioner: they shape its weights")
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CaptionerConfig:
        return cls(**data)


@dataclass(frozen=True)
class PromptContext:
    """What the prompt says about one molecule beside its soft tokens."""

    smiles: str = ""
    references: tuple[Reference, ...] = ()


def prompt_contexts(
    config: CaptionerConfig, views: Sequence[MoleculeViews], references: ReferenceSet | None
) -> list[PromptContext]:
    """Each molecule's SMILES and nearest described molecules (never itself), as `config` asks."""
    smiles = [v.canonical_smiles for v in views]
    cited: list[list[Reference]] = [[] for _ in views]
    if config.references:
        if references is None:
            raise ValueError(
                f"this captioner cites {config.references} references per molecule: give a ReferenceSet"
            )
        cited = references.nearest(smiles, [v.inchikey for v in views], config.references)
    return [
        PromptContext(smiles=s if config.smiles_chars else "", references=tuple(r))
        for s, r in zip(smiles, cited, strict=True)
    ]


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
        self._header_ids = self._encode(REFERENCES_HEADER)
        self.trained = False  # set by the stage-2 trainer before saving; the CLI warns when False
        self.version = "untrained"  # content hash once saved or loaded (checkpoint.py)

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _render_prompt(self) -> tuple[list[int], list[int]]:
        """Token ids before the soft tokens and after the context. Without context the text is the
        same as before references existed, so older captioners keep their prompt."""
        config = self.config
        soft = _SOFT_PROMPT_MARK if config.soft_prompt else ""
        context = _CONTEXT_MARK if config.uses_context else ""
        messages = [
            {"role": "system", "content": config.system_prompt},
            {"role": "user", "content": f"{soft}{context}\n{config.instruction}"},
        ]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        split_at = _SOFT_PROMPT_MARK if config.soft_prompt else _CONTEXT_MARK
        prefix, suffix = text.split(split_at)
        suffix = suffix.replace(_CONTEXT_MARK, "")  # the context goes between the soft tokens and here
        return self._encode(prefix), self._encode(suffix)

    def context_ids(self, context: PromptContext) -> list[int]:
        """Token ids of one molecule's SMILES and references (empty without context)."""
        config = self.config
        ids: list[int] = []
        if config.smiles_chars and context.smiles:
            ids += self._encode("\nSMILES: " + context.smiles[: config.smiles_chars])
        references = context.references[: config.references]
        if references:
            ids += self._header_ids
            for number, reference in enumerate(references, start=1):
                ids += self._encode(f"\n[{number}] (similarity {reference.similarity:.2f}) ")
                ids += self._encode(reference.description)[: config.reference_tokens]
        return ids

    @property
    def prompt_length(self) -> int:
        """The longest prompt this captioner builds (the exact length without context)."""
        config = self.config
        length = len(self.prefix_ids) + len(self.suffix_ids)
        length += config.num_query_tokens if config.soft_prompt else 0
        if config.smiles_chars:
            length += len(self._encode("\nSMILES: ")) + config.smiles_chars  # a token per character at most
        if config.references:
            per_reference = len(self._encode("\n[10] (similarity 0.00) ")) + config.reference_tokens
            length += len(self._header_ids) + config.references * per_reference
        return length

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The projector and the LoRA matrices (everything else is frozen)."""
        return [p for p in self.parameters() if p.requires_grad]

    def _embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        return self.llm.get_input_embeddings()(ids)

    # ----------------------------------------------------------------------------- prompts
    def _soft_tokens(self, query_states: torch.Tensor) -> torch.Tensor:
        expected = (self.config.num_query_tokens, self.config.qformer_hidden_size)
        if query_states.ndim != 3 or tuple(query_states.shape[1:]) != expected:
            raise ValueError(
                f"query_states must be (B, {expected[0]}, {expected[1]}), got {tuple(query_states.shape)}"
            )
        return self.projector(query_states.to(self.projector.weight.dtype))

    def prompt_embeds(self, query_states: torch.Tensor) -> torch.Tensor:
        """(B, 2K, H_q) query outputs → (B, P, H_llm) embeddings of the whole chat prompt, up to the
        assistant turn: the generation input of a captioner without context (see `prompts`)."""
        if self.config.uses_context or not self.config.soft_prompt:
            raise ValueError(
                "this captioner's prompts differ per molecule: use prompts(query_states, contexts)"
            )
        batch = query_states.shape[0]
        soft = self._soft_tokens(query_states)
        prefix = self._embed_ids(self.prefix_ids).expand(batch, -1, -1)
        suffix = self._embed_ids(self.suffix_ids).expand(batch, -1, -1)
        return torch.cat([prefix, soft, suffix], dim=1)

    def prompts(
        self, query_states: torch.Tensor | None, contexts: Sequence[PromptContext] | None = None
    ) -> list[torch.Tensor]:
        """One (P_i, H_llm) generation prompt per molecule: the soft tokens (when the config uses
        them) and the molecule's context (SMILES, references). `query_states` may be None only
        without soft prompt; `contexts` is required when the config uses context."""
        config = self.config
        if config.uses_context and contexts is None:
            raise ValueError("this captioner's prompts need a PromptContext per molecule")
        if config.soft_prompt and query_states is None:
            raise ValueError("this captioner's prompts need the molecules' query states")
        if not config.uses_context:  # then the soft prompt is on (the config requires one input)
            return list(self.prompt_embeds(query_states).unbind(0))
        batch = len(contexts) if contexts is not None else query_states.shape[0]
        if query_states is not None and query_states.shape[0] != batch:
            raise ValueError(f"{query_states.shape[0]} query states but {batch} contexts")
        soft = self._soft_tokens(query_states) if config.soft_prompt else None
        prefix = self._embed_ids(self.prefix_ids)
        suffix = self._embed_ids(self.suffix_ids)
        out = []
        for row in range(batch):
            parts = [prefix] if soft is None else [prefix, soft[row]]
            ids = self.context_ids(contexts[row]) if contexts is not None else []
            if ids:
                parts.append(self._embed_ids(torch.tensor(ids, dtype=torch.long, device=prefix.device)))
            parts.append(suffix)
            out.append(torch.cat(parts, dim=0))
        return out

    def tokenize_descriptions(self, descriptions: Sequence[str]) -> list[list[int]]:
        """Token ids of each description (truncated) followed by the end-of-turn token."""
        limit = self.config.max_description_tokens
        encoded = self.tokenizer(list(descriptions), add_special_tokens=False)["input_ids"]
        return [[*ids[:limit], self.eos_token_id] for ids in encoded]

    def build_training_inputs(
        self,
        query_states: torch.Tensor | None,
        descriptions: Sequence[str],
        padding_side: str = "right",
        contexts: Sequence[PromptContext] | None = None,
    ) -> TrainingInputs:
        """Per row ``[prompt][description][eos]``, padded on ``padding_side``; position ids count real
        tokens only, so both sides give the same loss."""
        if padding_side not in {"left", "right"}:
            raise ValueError("padding_side must be 'left' or 'right'")
        device = self.projector.weight.device
        prompts = self.prompts(None if query_states is None else query_states.to(device), contexts)
        if len(descriptions) != len(prompts):
            raise ValueError(f"{len(prompts)} molecules but {len(descriptions)} descriptions")
        hidden = prompts[0].shape[1]
        targets = self.tokenize_descriptions(descriptions)
        target_ids = torch.tensor([i for t in targets for i in t], dtype=torch.long, device=device)
        target_embeds = self._embed_ids(target_ids).split([len(t) for t in targets])
        width = max(len(p) + len(t) for p, t in zip(prompts, targets, strict=True))

        rows, masks, labels = [], [], []
        for prompt, target, embeds in zip(prompts, targets, target_embeds, strict=True):
            prompt_len = len(prompt)
            n_pad = width - prompt_len - len(target)
            pad = prompt.new_zeros(n_pad, hidden)
            row_labels = torch.tensor([IGNORE_INDEX] * prompt_len + target, dtype=torch.long, device=device)
            pad_labels = torch.full((n_pad,), IGNORE_INDEX, dtype=torch.long, device=device)
            ones = torch.ones(width - n_pad, dtype=torch.long, device=device)
            zeros = torch.zeros(n_pad, dtype=torch.long, device=device)
            if padding_side == "right":
                rows.append(torch.cat([prompt, embeds, pad]))
                masks.append(torch.cat([ones, zeros]))
                labels.append(torch.cat([row_labels, pad_labels]))
            else:
                rows.append(torch.cat([pad, prompt, embeds]))
                masks.append(torch.cat([zeros, ones]))
                labels.append(torch.cat([pad_labels, row_labels]))
        mask = torch.stack(masks)
        position_ids = (mask.cumsum(dim=1) - 1).clamp(min=0)
        return TrainingInputs(torch.stack(rows), mask, position_ids, torch.stack(labels))

    # ----------------------------------------------------------------------------- training
    def forward(
        self,
        query_states: torch.Tensor | None,
        descriptions: Sequence[str],
        contexts: Sequence[PromptContext] | None = None,
    ) -> torch.Tensor:
        """Mean cross-entropy over the description tokens (+ end-of-turn) of a batch."""
        inputs = self.build_training_inputs(query_states, descriptions, contexts=contexts)
        out = self.llm(
            inputs_embeds=inputs.inputs_embeds,
            attention_mask=inputs.attention_mask,
            position_ids=inputs.position_ids,
            labels=inputs.labels,
            use_cache=False,
        )
        return out.loss

    def loss_from_views(
        self,
        mvclam: MVCLAM,
        views: ViewBatch,
        descriptions: Sequence[str],
        train_molecule: bool = False,
        contexts: Sequence[PromptContext] | None = None,
    ) -> torch.Tensor:
        """Stage-2 loss from views. The molecule side is frozen by default (no graph is kept through
        it); ``train_molecule=True`` back-propagates into the encoders and the MQ-Former as well —
        add ``mvclam.parameters()`` to the optimizer then."""
        if not self.config.soft_prompt:
            return self(None, descriptions, contexts)
        if train_molecule:
            query_states = molecule_query_states(mvclam, views)
        else:
            with torch.no_grad():
                query_states = molecule_query_states(mvclam, views)
        return self(query_states, descriptions, contexts)
