"""MV-CLAM: 2D and 3D molecule encoders, the MQ-Former, projection heads and the three training losses.

Public inference API (all inputs batched):

* ``embed_molecules(views)`` → ``MoleculeEmbeddings``: (B, 2K, D) L2-normalised tokens + (B, D) pooled vector
* ``embed_texts(texts)`` → (B, D) L2-normalised vectors from the text [CLS]
* ``score(text_vectors, molecule_tokens)`` → (T, M) MaxSim = max over tokens of the cosine
* ``match_probability(views, texts)`` → (B,) matching-head probability, for re-ranking

``forward(views, text_ids, text_mask)`` returns the weighted training losses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedTokenizerBase

from mvclam.engine import losses
from mvclam.engine.models import checkpoint
from mvclam.engine.models.config import MVCLAMConfig
from mvclam.engine.models.mat import MATEncoder
from mvclam.engine.models.mqformer import MQFormer
from mvclam.engine.models.pretrained import MINILM_DISTRIBUTION, load_minilm_state, load_tokenizer
from mvclam.engine.models.unimol import UniMolEncoder
from mvclam.engine.views import ViewBatch
from mvclam.kernels import maxsim, project_normalize

# BLIP-2 starts decoded text with a dedicated token so the shared layers know they are decoding.
DECODER_START_TOKEN = "[unused0]"
MAX_LOGIT_SCALE = 100.0


@dataclass
class MoleculeEmbeddings:
    tokens: torch.Tensor  # (B, 2K, D), L2-normalised
    pooled: torch.Tensor  # (B, D), L2-normalised mean of the tokens


@dataclass
class MVCLAMLosses:
    loss: torch.Tensor
    contrastive: torch.Tensor
    matching: torch.Tensor
    captioning: torch.Tensor
    molecule_tokens: torch.Tensor | None = None  # (B, 2K, D) of this batch, e.g. for a negative queue


@dataclass
class ExtraNegatives:
    """Contrastive candidates beyond the batch (LiT-style training with a frozen, cached text tower)."""

    text_states: torch.Tensor | None = None  # (X, H) cached text [CLS] states; projected by the model
    text_groups: torch.Tensor | None = None  # (X,) molecule group of each
    molecule_tokens: torch.Tensor | None = None  # (Y, 2K, D) earlier steps' tokens (detached)
    molecule_groups: torch.Tensor | None = None  # (Y,)


class LMHead(nn.Module):
    """BERT's LM prediction head; the decoder matrix is the (tied) word-embedding matrix."""

    def __init__(self, hidden_size: int, vocab_size: int, eps: float):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=eps)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, hidden: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        return F.linear(self.LayerNorm(F.gelu(self.dense(hidden))), word_embeddings, self.bias)


class MVCLAM(nn.Module):
    def __init__(
        self,
        config: MVCLAMConfig,
        load_pretrained: bool = True,
        tokenizer: PreTrainedTokenizerBase | None = None,
    ):
        super().__init__()
        self.config = config
        qformer = config.qformer
        self.encoder_2d = MATEncoder(config.encoder_2d)
        self.encoder_3d = UniMolEncoder(config.encoder_3d)
        self.qformer = MQFormer(qformer, (self.encoder_2d.hidden_size, self.encoder_3d.hidden_size))
        self.molecule_projection = nn.Linear(qformer.hidden_size, config.embedding_dim)
        self.text_projection = nn.Linear(qformer.hidden_size, config.embedding_dim)
        self.matching_head = nn.Linear(qformer.hidden_size, 2)
        self.lm_head = LMHead(qformer.hidden_size, qformer.vocab_size, qformer.layer_norm_eps)
        self.log_logit_scale = nn.Parameter(
            torch.tensor(math.log(1.0 / config.loss.temperature)), requires_grad=config.loss.learn_temperature
        )
        self.apply(_init_weights)
        # Parameters copied from a pinned weight package: name -> (distribution, key in its file).
        self.package_sources: dict[str, tuple[str, str]] = {}
        if load_pretrained and qformer.init == "minilm":
            self._load_minilm()
        elif qformer.init not in {"minilm", "none"}:
            raise ValueError(f"qformer.init must be 'minilm' or 'none', got '{qformer.init}'")
        self.qformer.embeddings.word_embeddings.weight.requires_grad_(not qformer.freeze_word_embeddings)
        self.tokenizer: PreTrainedTokenizerBase = tokenizer or load_tokenizer(qformer.tokenizer)
        if len(self.tokenizer) > qformer.vocab_size:
            raise ValueError(
                f"tokenizer has {len(self.tokenizer)} tokens but qformer.vocab_size is {qformer.vocab_size}"
            )
        self.decoder_start_id = self.tokenizer.convert_tokens_to_ids(DECODER_START_TOKEN)
        self.model_version = "untrained"

    # ----------------------------------------------------------------------------- initialisation
    def _load_minilm(self) -> None:
        q = self.config.qformer
        expected = dict(hidden_size=384, num_layers=6, num_heads=12, intermediate_size=1536, vocab_size=30522)
        actual = {key: getattr(q, key) for key in expected}
        if actual != expected:
            raise ValueError(f"qformer.init=minilm needs the MiniLM sizes {expected}, got {actual}")
        source = load_minilm_state()
        own = self.state_dict()
        copied: dict[str, torch.Tensor] = {}
        for key, tensor in source.items():
            if key.startswith("embeddings.") and key != "embeddings.position_ids":
                target = f"qformer.{key}"
            elif key.startswith("encoder.layer."):
                target = "qformer." + key.removeprefix("encoder.")
            else:
                continue  # the sentence-embedding pooler is not part of the Q-Former
            copied[target] = tensor
            self.package_sources[target] = (MINILM_DISTRIBUTION, key)
            # BLIP-2 initialises the query FFN as a copy of the text FFN.
            for text_part, query_part in (
                (".intermediate.", ".intermediate_query."),
                (".output.dense", ".output_query.dense"),
                (".output.LayerNorm", ".output_query.LayerNorm"),
            ):
                if text_part in target and ".attention." not in target:
                    copied[target.replace(text_part, query_part)] = tensor
        missing = [key for key in copied if key not in own]
        if missing:
            raise RuntimeError(f"MiniLM tensors without a destination: {missing[:5]}")
        self.load_state_dict(copied, strict=False)

    # ----------------------------------------------------------------------------- encoders
    def encode_views(self, views: ViewBatch) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per-view atom states and key masks: ([2D (B,N,E2), 3D (B,N,E3)], [mask, mask])."""
        return [self.encoder_2d(views), self.encoder_3d(views)], [views.atom_mask, views.atom_mask]

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        encoded = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.config.max_text_length,
            return_tensors="pt",
        )
        device = self.log_logit_scale.device
        return encoded["input_ids"].to(device), encoded["attention_mask"].to(device)

    def project_molecule_states(
        self, query_states: torch.Tensor, out_dtype: torch.dtype | None = None
    ) -> MoleculeEmbeddings:
        tokens = project_normalize(
            query_states, self.molecule_projection.weight, self.molecule_projection.bias, out_dtype=out_dtype
        )
        pooled = F.normalize(tokens.float().mean(dim=1), dim=-1).to(tokens.dtype)
        return MoleculeEmbeddings(tokens=tokens, pooled=pooled)

    def embed_molecules(self, views: ViewBatch, out_dtype: torch.dtype | None = None) -> MoleculeEmbeddings:
        states, masks = self.encode_views(views)
        query_states, _ = self.qformer("molecule", states, masks)
        assert query_states is not None
        return self.project_molecule_states(query_states, out_dtype)

    def text_cls_states(self, text_ids: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """(B, H) [CLS] states of the text branch, before the text projection."""
        _, text_states = self.qformer("text", text_ids=text_ids, text_mask=text_mask)
        assert text_states is not None
        return text_states[:, 0]

    def project_text_states(self, cls_states: torch.Tensor) -> torch.Tensor:
        """(B, H) [CLS] states → (B, D) L2-normalised text vectors."""
        return project_normalize(cls_states, self.text_projection.weight, self.text_projection.bias)

    def embed_text_ids(self, text_ids: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        return self.project_text_states(self.text_cls_states(text_ids, text_mask))

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        return self.embed_text_ids(*self.tokenize(texts))

    @staticmethod
    def score(
        text_vectors: torch.Tensor, molecule_tokens: torch.Tensor, token_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(T, D) texts against (M, 2K, D) molecule tokens → (T, M) MaxSim scores."""
        return maxsim(text_vectors, molecule_tokens, token_mask)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.log_logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    # ----------------------------------------------------------------------------- matching / captioning
    def match_logits(
        self,
        states: list[torch.Tensor],
        masks: list[torch.Tensor],
        text_ids: torch.Tensor,
        text_mask: torch.Tensor,
    ) -> torch.Tensor:
        """(P, 2) logits for row-aligned (molecule, text) pairs; BLIP-2 averages the head over query outputs."""
        query_states, _ = self.qformer("match", states, masks, text_ids, text_mask)
        assert query_states is not None
        return self.matching_head(query_states).mean(dim=1)

    def match_probability(self, views: ViewBatch, texts: list[str]) -> torch.Tensor:
        states, masks = self.encode_views(views)
        return self.match_logits(states, masks, *self.tokenize(texts)).softmax(dim=-1)[:, 1]

    def caption_logits(
        self,
        states: list[torch.Tensor],
        masks: list[torch.Tensor],
        text_ids: torch.Tensor,
        text_mask: torch.Tensor,
    ) -> torch.Tensor:
        decoder_ids = text_ids.clone()
        decoder_ids[:, 0] = self.decoder_start_id
        _, text_states = self.qformer("caption", states, masks, decoder_ids, text_mask)
        assert text_states is not None
        return self.lm_head(text_states, self.qformer.embeddings.word_embeddings.weight)

    # ----------------------------------------------------------------------------- training
    def forward(
        self,
        views: ViewBatch,
        text_ids: torch.Tensor | None,
        text_mask: torch.Tensor | None,
        group_ids: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        text_states: torch.Tensor | None = None,
        negatives: ExtraNegatives | None = None,
    ) -> MVCLAMLosses:
        """Weighted sum of the contrastive, matching and captioning losses for row-aligned pairs.

        ``group_ids`` (B,) marks rows of the same molecule so they are never treated as negatives.
        ``text_states`` (B, H) replaces the text branch with cached [CLS] states (a frozen text
        tower); only the contrastive loss is defined then. ``negatives`` adds candidates beyond the
        batch to the contrastive loss.
        """
        weights = self.config.loss
        zero = self.log_logit_scale.new_zeros(())
        if text_states is not None and (weights.matching_weight or weights.captioning_weight):
            raise ValueError(
                "cached text states train the contrastive loss only: set matching/captioning weights to 0"
            )
        states, masks = self.encode_views(views)
        query_states, _ = self.qformer("molecule", states, masks)
        assert query_states is not None
        molecule_tokens = self.project_molecule_states(query_states).tokens
        if text_states is None:
            assert text_ids is not None and text_mask is not None
            text_vectors = self.embed_text_ids(text_ids, text_mask)
        else:
            text_vectors = self.project_text_states(text_states)
        negatives = negatives or ExtraNegatives()
        extra_texts = (
            self.project_text_states(negatives.text_states) if negatives.text_states is not None else None
        )
        contrastive = losses.token_contrastive_loss(
            molecule_tokens,
            text_vectors,
            self.logit_scale,
            group_ids,
            extra_texts=extra_texts,
            extra_text_groups=negatives.text_groups,
            extra_molecules=negatives.molecule_tokens,
            extra_molecule_groups=negatives.molecule_groups,
        )

        matching = zero
        if weights.matching_weight:
            similarity = losses.token_similarity(molecule_tokens, text_vectors)
            negative_molecule, negative_text = losses.sample_hard_negatives(similarity, group_ids, generator)
            rows = torch.arange(len(text_ids), device=text_ids.device)
            if 0 < weights.matching_rows < len(rows):
                rows = torch.randperm(len(rows), generator=generator)[: weights.matching_rows].to(rows.device)
                negative_molecule, negative_text = negative_molecule[rows], negative_text[rows]
            has_neg_molecule, has_neg_text = negative_molecule >= 0, negative_text >= 0
            molecule_index = torch.cat([rows, negative_molecule[has_neg_molecule], rows[has_neg_text]])
            text_index = torch.cat([rows, rows[has_neg_molecule], negative_text[has_neg_text]])
            labels = (torch.arange(len(molecule_index), device=rows.device) < len(rows)).long()
            logits = self.match_logits(
                [s[molecule_index] for s in states],
                [m[molecule_index] for m in masks],
                text_ids[text_index],
                text_mask[text_index],
            )
            matching = losses.matching_loss(logits, labels)

        captioning = zero
        if weights.captioning_weight:
            token_logits = self.caption_logits(states, masks, text_ids, text_mask)
            captioning = losses.captioning_loss(token_logits, text_ids, text_mask)

        total = (
            weights.contrastive_weight * contrastive
            + weights.matching_weight * matching
            + weights.captioning_weight * captioning
        )
        return MVCLAMLosses(
            loss=total,
            contrastive=contrastive,
            matching=matching,
            captioning=captioning,
            molecule_tokens=molecule_tokens,
        )

    # ----------------------------------------------------------------------------- checkpoints
    def save_pretrained(self, directory: str | Path, weights_dtype: torch.dtype = torch.float32) -> Path:
        return checkpoint.save_checkpoint(self, directory, weights_dtype)

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> MVCLAM:
        contents = checkpoint.read_checkpoint(directory)
        model = cls(contents.config, load_pretrained=False, tokenizer=contents.tokenizer)
        checkpoint.load_weights(model, directory, contents.manifest)
        return model.to(map_location)

    def parameter_counts(self) -> dict[str, int]:
        parts = {
            "encoder_2d": self.encoder_2d,
            "encoder_3d": self.encoder_3d,
            "qformer": self.qformer,
            "heads": [self.molecule_projection, self.text_projection, self.matching_head, self.lm_head],
        }
        counts = {}
        for name, modules in parts.items():
            modules = modules if isinstance(modules, list) else [modules]
            counts[name] = sum(p.numel() for m in modules for p in m.parameters())
        counts["total"] = sum(p.numel() for p in self.parameters())
        counts["trainable"] = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return counts


def _init_weights(module: nn.Module) -> None:
    """BERT's initialisation for everything not copied from pretrained weights."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
