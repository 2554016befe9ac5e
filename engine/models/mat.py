"""2D encoder: a Molecule Attention Transformer (MAT, Maziarka et al. 2020) over the molecular graph.

Each head mixes three row-stochastic matrices over the atoms of one molecule,

    P = λ_a · softmax(QKᵀ/√d)  +  λ_d · softmax(−D)  +  (1 − λ_a − λ_d) · Â

with D the topological (shortest-path) distance matrix and Â the row-normalised adjacency
with self-loops (self-loops keep Â defined for single-atom molecules, where MAT uses a dummy node).
Padded atoms are masked out of all three terms, so an atom's output does not depend on how
much padding its batch has.
"""

from __future__ import annotations

import torch
from torch import nn

from mvclam.engine.models.config import Graph2DEncoderConfig
from mvclam.engine.views import ATOM_FEATURE_CARDINALITIES, ViewBatch
from mvclam.engine.views.collate import ENVIRONMENT_RADIUS


class AtomFeatureEmbedding(nn.Module):
    """Sum of one embedding table per categorical atom-feature column (index 0 = padding)."""

    def __init__(self, hidden_size: int, cardinalities: tuple[int, ...] = ATOM_FEATURE_CARDINALITIES):
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(size, hidden_size, padding_idx=0) for size in cardinalities)

    def forward(self, atom_features: torch.Tensor) -> torch.Tensor:
        out = self.tables[0](atom_features[..., 0])
        for column, table in enumerate(self.tables[1:], start=1):
            out = out + table(atom_features[..., column])
        return out


class AtomEnvironmentEmbedding(nn.Module):
    """Sum over radii 1..R of one shared table indexed by hashed environment ids (Mol2vec-like
    substructure identity, which plain per-atom features give the attention layers only slowly)."""

    def __init__(self, hidden_size: int, buckets: int, radius: int):
        super().__init__()
        if not 1 <= radius <= ENVIRONMENT_RADIUS:
            raise ValueError(f"encoder_2d.environment_radius must be in 1..{ENVIRONMENT_RADIUS}")
        self.radius = radius
        self.buckets = buckets
        self.table = nn.Embedding(buckets, hidden_size, padding_idx=0)

    def forward(self, environments: torch.Tensor, atom_mask: torch.Tensor) -> torch.Tensor:
        ids = 1 + environments[..., 1 : self.radius + 1] % (self.buckets - 1)  # row 0 stays padding
        return self.table(ids * atom_mask[..., None]).sum(dim=-2)


class MATAttention(nn.Module):
    def __init__(self, config: Graph2DEncoderConfig):
        super().__init__()
        if config.hidden_size % config.num_heads:
            raise ValueError("encoder_2d.hidden_size must be divisible by encoder_2d.num_heads")
        self.num_heads = config.num_heads
        self.head_dim = config.hidden_size // config.num_heads
        self.lambda_attention = config.lambda_attention
        self.lambda_distance = config.lambda_distance
        self.lambda_adjacency = 1.0 - config.lambda_attention - config.lambda_distance
        if self.lambda_adjacency < 0:
            raise ValueError("lambda_attention + lambda_distance must be at most 1")
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.out = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, graph_mixing: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        batch, atoms, hidden = x.shape
        q, k, v = self.qkv(x).view(batch, atoms, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        logits = (q @ k.transpose(-1, -2)) * self.head_dim**-0.5
        logits = logits.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        probs = self.lambda_attention * logits.softmax(dim=-1) + graph_mixing[:, None]
        context = (self.dropout(probs) @ v).transpose(1, 2).reshape(batch, atoms, hidden)
        return self.out(context)


class MATLayer(nn.Module):
    """Pre-LayerNorm transformer block with MAT attention."""

    def __init__(self, config: Graph2DEncoderConfig):
        super().__init__()
        self.attention_norm = nn.LayerNorm(config.hidden_size)
        self.attention = MATAttention(config)
        self.ffn_norm = nn.LayerNorm(config.hidden_size)
        self.ffn = nn.Sequential(
            nn.Linear(config.hidden_size, config.ffn_size),
            nn.GELU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.ffn_size, config.hidden_size),
        )
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, graph_mixing: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.attention(self.attention_norm(x), graph_mixing, key_mask))
        return x + self.dropout(self.ffn(self.ffn_norm(x)))


class MATEncoder(nn.Module):
    """Atom features + graph → per-atom states (B, N, hidden), zero at padded atoms."""

    def __init__(self, config: Graph2DEncoderConfig):
        super().__init__()
        self.config = config
        self.embedding = AtomFeatureEmbedding(config.hidden_size)
        self.environment_embedding = (
            AtomEnvironmentEmbedding(
                config.hidden_size, config.environment_buckets, config.environment_radius
            )
            if config.environment_buckets
            else None
        )
        self.layers = nn.ModuleList(MATLayer(config) for _ in range(config.num_layers))
        self.final_norm = nn.LayerNorm(config.hidden_size)

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    def graph_mixing(self, batch: ViewBatch) -> torch.Tensor:
        """The attention-independent part of P (same for every head and layer): λ_d softmax(−D) + λ_g Â."""
        mask = batch.atom_mask
        pair_mask = mask[:, :, None] & mask[:, None, :]
        distance = (-batch.topological_distance).masked_fill(~pair_mask, float("-inf"))
        # Padded query rows have no valid key: nan_to_num keeps them finite (they are zeroed later).
        distance_probs = torch.nan_to_num(distance.softmax(dim=-1), nan=0.0)
        eye = torch.eye(mask.shape[1], dtype=batch.adjacency.dtype, device=mask.device)
        adjacency = (batch.adjacency + eye) * pair_mask
        adjacency = adjacency / adjacency.sum(dim=-1, keepdim=True).clamp_min(1.0)
        lambda_adjacency = 1.0 - self.config.lambda_attention - self.config.lambda_distance
        return self.config.lambda_distance * distance_probs + lambda_adjacency * adjacency

    def forward(self, batch: ViewBatch) -> torch.Tensor:
        mask = batch.atom_mask
        mixing = self.graph_mixing(batch)
        x = self.embedding(batch.atom_features)
        if self.environment_embedding is not None:
            x = x + self.environment_embedding(batch.atom_environments, mask)
        for layer in self.layers:
            x = layer(x, mixing, mask)
        return self.final_norm(x) * mask[..., None]
