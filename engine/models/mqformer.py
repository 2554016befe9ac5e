"""MQ-Former: a BLIP-2 Q-Former over several molecule views, built from BERT layers.

One set of K learnable query tokens is instantiated once per view, so the query sequence is
``[view 0 queries (K) | view 1 queries (K)]`` (2K tokens) optionally followed by text tokens.
Every layer has

* one **shared** BERT self-attention over the whole sequence (queries, text, or both),
* every ``cross_attention_every``-th layer, a **separate cross-attention per view**: the queries of
  view v attend over view v's atom states (its own weights, key-padding mask),
* a query-specific FFN on query positions and the BERT FFN on text positions (BLIP-2's split).

Which positions see which is decided by the attention mask of the mode:

==========  ======================================  ==========================================
mode        queries attend to                       text attends to
==========  ======================================  ==========================================
molecule    queries of the same view                (no text)
text        (no queries)                            text (bidirectional)
match       queries of the same view + text         all queries + text (bidirectional)
caption     queries of the same view                all queries + earlier text (causal)
==========  ======================================  ==========================================

Keeping views apart in self-attention makes the molecule tokens of the ``match`` and ``caption``
modes comparable with the ``molecule`` mode, and lets text fuse information from both views.
Parameter names follow BERT's so all-MiniLM-L6-v2's weights load by name.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from mvclam.engine.models.config import QFormerConfig
from mvclam.kernels import query_cross_attention

Mode = Literal["molecule", "text", "match", "caption"]
MODES: tuple[str, ...] = ("molecule", "text", "match", "caption")


class BertEmbeddings(nn.Module):
    def __init__(self, config: QFormerConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=0)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(positions)[None]
            + self.token_type_embeddings.weight[0]
        )
        return self.dropout(self.LayerNorm(x))


class SelfAttentionProjections(nn.Module):
    def __init__(self, hidden_size: int):
        super().__init__()
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)


class ResidualOutput(nn.Module):
    """BERT's post-LayerNorm residual: LN(x + dropout(dense(h)))."""

    def __init__(self, in_size: int, hidden_size: int, eps: float, dropout: float):
        super().__init__()
        self.dense = nn.Linear(in_size, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(residual + self.dropout(self.dense(hidden)))


class BertSelfAttention(nn.Module):
    def __init__(self, config: QFormerConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.hidden_size // config.num_heads
        self.dropout_p = config.dropout
        self.self = SelfAttentionProjections(config.hidden_size)
        self.output = ResidualOutput(
            config.hidden_size, config.hidden_size, config.layer_norm_eps, config.dropout
        )

    def forward(self, x: torch.Tensor, attend: torch.Tensor) -> torch.Tensor:
        batch, length, hidden = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.self.query(x)), heads(self.self.key(x)), heads(self.self.value(x))
        context = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attend[:, None], dropout_p=self.dropout_p if self.training else 0.0
        )
        return self.output(context.transpose(1, 2).reshape(batch, length, hidden), x)


class ViewCrossAttention(nn.Module):
    """Queries (hidden) attend over one view's atom states (encoder width)."""

    def __init__(self, config: QFormerConfig, encoder_size: int):
        super().__init__()
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(encoder_size, config.hidden_size)
        self.value = nn.Linear(encoder_size, config.hidden_size)
        self.output = ResidualOutput(
            config.hidden_size, config.hidden_size, config.layer_norm_eps, config.dropout
        )


class FeedForward(nn.Module):
    def __init__(self, config: QFormerConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))


class MQFormerLayer(nn.Module):
    def __init__(self, config: QFormerConfig, encoder_sizes: tuple[int, ...], has_cross_attention: bool):
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.hidden_size // config.num_heads
        self.attention = BertSelfAttention(config)
        self.crossattention = (
            nn.ModuleList(ViewCrossAttention(config, size) for size in encoder_sizes)
            if has_cross_attention
            else None
        )
        # Text FFN (BERT's names) and the query FFN (BLIP-2's intermediate_query/output_query).
        self.intermediate = FeedForward(config)
        self.output = ResidualOutput(
            config.intermediate_size, config.hidden_size, config.layer_norm_eps, config.dropout
        )
        self.intermediate_query = FeedForward(config)
        self.output_query = ResidualOutput(
            config.intermediate_size, config.hidden_size, config.layer_norm_eps, config.dropout
        )

    def cross_attend(
        self, queries: torch.Tensor, views: list[torch.Tensor], view_masks: list[torch.Tensor]
    ) -> torch.Tensor:
        """queries: (B, V*K, H); views[v]: (B, N_v, E_v). All views go to the kernel in one call when N matches."""
        assert self.crossattention is not None
        batch, _, hidden = queries.shape
        num_views = len(views)
        per_view = queries.view(batch, num_views, -1, hidden)

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(t.shape[0], t.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

        q = [heads(block.query(per_view[:, v])) for v, block in enumerate(self.crossattention)]
        k = [heads(block.key(views[v])) for v, block in enumerate(self.crossattention)]
        v_ = [heads(block.value(views[v])) for v, block in enumerate(self.crossattention)]
        if len({t.shape[2] for t in k}) == 1:  # same atom count in every view: one launch
            context = query_cross_attention(torch.cat(q), torch.cat(k), torch.cat(v_), torch.cat(view_masks))
            contexts = list(context.split(batch))
        else:
            contexts = [query_cross_attention(*args) for args in zip(q, k, v_, view_masks, strict=True)]
        outputs = [
            block.output(ctx.transpose(1, 2).reshape(batch, -1, hidden), per_view[:, view])
            for view, (block, ctx) in enumerate(zip(self.crossattention, contexts, strict=True))
        ]
        return torch.cat(outputs, dim=1)

    def forward(
        self,
        x: torch.Tensor,
        attend: torch.Tensor,
        num_query_positions: int,
        views: list[torch.Tensor],
        view_masks: list[torch.Tensor],
    ) -> torch.Tensor:
        x = self.attention(x, attend)
        queries, text = x[:, :num_query_positions], x[:, num_query_positions:]
        parts = []
        if num_query_positions:
            if self.crossattention is not None:
                queries = self.cross_attend(queries, views, view_masks)
            parts.append(self.output_query(self.intermediate_query(queries), queries))
        if text.shape[1]:
            parts.append(self.output(self.intermediate(text), text))
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]


def build_attention_mask(
    mode: str,
    batch: int,
    num_views: int,
    num_queries: int,
    text_mask: torch.Tensor | None,
    device: torch.device,
) -> torch.Tensor:
    """Boolean (B, S, S) mask, True where a position (row) may attend to another (column); see module doc."""
    if mode not in MODES:
        raise ValueError(f"unknown mode '{mode}'; expected one of {MODES}")
    query_len = 0 if mode == "text" else num_views * num_queries
    text_len = 0 if mode == "molecule" or text_mask is None else text_mask.shape[1]
    total = query_len + text_len
    attend = torch.zeros(batch, total, total, dtype=torch.bool, device=device)
    if query_len:
        view_of = torch.arange(query_len, device=device) // num_queries
        attend[:, :query_len, :query_len] = view_of[:, None] == view_of[None, :]
    if text_len:
        assert text_mask is not None
        valid = text_mask.bool()
        text_block = valid[:, None, :].expand(batch, text_len, text_len)
        if mode == "caption":
            text_block = text_block & torch.ones(text_len, text_len, dtype=torch.bool, device=device).tril()
        attend[:, query_len:, query_len:] = text_block
        attend[:, query_len:, :query_len] = True
        if mode == "match":
            attend[:, :query_len, query_len:] = valid[:, None, :]
        # Padded text rows attend to themselves so no row is fully masked (their outputs are ignored).
        rows = torch.arange(text_len, device=device) + query_len
        attend[:, rows, rows] = True
    return attend


class MQFormer(nn.Module):
    """Shared BERT layers + learnable queries + one cross-attention per view (every n-th layer)."""

    def __init__(self, config: QFormerConfig, encoder_sizes: tuple[int, ...]):
        super().__init__()
        if config.hidden_size % config.num_heads:
            raise ValueError("qformer.hidden_size must be divisible by qformer.num_heads")
        self.config = config
        self.num_views = len(encoder_sizes)
        self.embeddings = BertEmbeddings(config)
        self.query_tokens = nn.Parameter(torch.randn(config.num_query_tokens, config.hidden_size) * 0.02)
        self.layer = nn.ModuleList(
            MQFormerLayer(
                config, encoder_sizes, has_cross_attention=index % config.cross_attention_every == 0
            )
            for index in range(config.num_layers)
        )

    def forward(
        self,
        mode: Mode,
        views: list[torch.Tensor] | None = None,
        view_masks: list[torch.Tensor] | None = None,
        text_ids: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Returns (query states (B, V*K, H) or None, text states (B, L, H) or None)."""
        needs_views = mode != "text"
        needs_text = mode != "molecule"
        if needs_views and (views is None or view_masks is None or len(views) != self.num_views):
            raise ValueError(f"mode '{mode}' needs {self.num_views} view states and masks")
        if needs_text and (text_ids is None or text_mask is None):
            raise ValueError(f"mode '{mode}' needs text_ids and text_mask")
        views = views or []
        view_masks = view_masks or []
        batch = views[0].shape[0] if needs_views else text_ids.shape[0]  # type: ignore[union-attr]
        device = self.query_tokens.device

        pieces = []
        if needs_views:
            queries = self.query_tokens[None].expand(batch * self.num_views, -1, -1)
            queries = self.embeddings.dropout(self.embeddings.LayerNorm(queries))
            pieces.append(queries.reshape(batch, -1, self.config.hidden_size))
        if needs_text:
            pieces.append(self.embeddings(text_ids))
        x = torch.cat(pieces, dim=1) if len(pieces) > 1 else pieces[0]

        num_query_positions = self.num_views * self.config.num_query_tokens if needs_views else 0
        attend = build_attention_mask(
            mode,
            batch,
            self.num_views,
            self.config.num_query_tokens,
            text_mask if needs_text else None,
            device,
        )
        for layer in self.layer:
            x = layer(x, attend, num_query_positions, views, view_masks)
        query_states = x[:, :num_query_positions] if needs_views else None
        text_states = x[:, num_query_positions:] if needs_text else None
        return query_states, text_states
