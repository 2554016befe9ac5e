"""3D encoder: a Uni-Mol-style transformer (Zhou et al. 2023) over one conformer.

Atoms are embedded by element type. Pairwise distances, scaled and shifted per pair of atom types,
are expanded in a learnable Gaussian basis and mapped to one attention bias per head (the
fused ``gaussian_pair_bias`` kernel). Like Uni-Mol, the pair representation is updated across
layers: each layer's pre-softmax attention logits become the next layer's bias.
"""

from __future__ import annotations

import torch
from torch import nn

from mvclam.engine.models.config import Conformer3DEncoderConfig
from mvclam.engine.views import NUM_ELEMENT_TYPES, ViewBatch
from mvclam.kernels import PairBiasWeights, gaussian_pair_bias


class GaussianPairBias(nn.Module):
    """Distances → per-pair-type affine → K Gaussians → Linear-GELU-Linear → one bias per head."""

    def __init__(self, num_gaussians: int, num_heads: int, num_atom_types: int = NUM_ELEMENT_TYPES):
        super().__init__()
        self.num_atom_types = num_atom_types
        num_pairs = num_atom_types * num_atom_types
        self.pair_mul = nn.Parameter(torch.ones(num_pairs))
        self.pair_add = nn.Parameter(torch.zeros(num_pairs))
        # Uni-Mol's initialisation: centres and widths spread over 0–3 Å-scaled units.
        self.means = nn.Parameter(torch.empty(num_gaussians).uniform_(0.0, 3.0))
        self.stds = nn.Parameter(torch.empty(num_gaussians).uniform_(0.0, 3.0))
        self.hidden = nn.Linear(num_gaussians, num_gaussians)
        self.to_heads = nn.Linear(num_gaussians, num_heads)

    def forward(self, batch: ViewBatch) -> torch.Tensor:
        weights = PairBiasWeights(
            pair_mul=self.pair_mul,
            pair_add=self.pair_add,
            means=self.means,
            stds=self.stds,
            w1=self.hidden.weight,
            b1=self.hidden.bias,
            w2=self.to_heads.weight,
            b2=self.to_heads.bias,
        )
        return gaussian_pair_bias(batch.coordinates, batch.element_indices, batch.atom_mask, weights)


class UniMolLayer(nn.Module):
    """Pre-LayerNorm block whose attention takes and returns the pair representation."""

    def __init__(self, config: Conformer3DEncoderConfig):
        super().__init__()
        if config.hidden_size % config.num_heads:
            raise ValueError("encoder_3d.hidden_size must be divisible by encoder_3d.num_heads")
        self.num_heads = config.num_heads
        self.head_dim = config.hidden_size // config.num_heads
        self.attention_norm = nn.LayerNorm(config.hidden_size)
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.out = nn.Linear(config.hidden_size, config.hidden_size)
        self.ffn_norm = nn.LayerNorm(config.hidden_size)
        self.ffn = nn.Sequential(
            nn.Linear(config.hidden_size, config.ffn_size),
            nn.GELU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.ffn_size, config.hidden_size),
        )
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self, x: torch.Tensor, pair: torch.Tensor, key_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch, atoms, hidden = x.shape
        q, k, v = (
            self.qkv(self.attention_norm(x))
            .view(batch, atoms, 3, self.num_heads, self.head_dim)
            .permute(2, 0, 3, 1, 4)
        )
        logits = (q @ k.transpose(-1, -2)) * self.head_dim**-0.5 + pair
        probs = logits.masked_fill(~key_mask[:, None, None, :], float("-inf")).softmax(dim=-1)
        context = (self.dropout(probs) @ v).transpose(1, 2).reshape(batch, atoms, hidden)
        x = x + self.dropout(self.out(context))
        x = x + self.dropout(self.ffn(self.ffn_norm(x)))
        return x, logits


class UniMolEncoder(nn.Module):
    """Element types + coordinates → per-atom states (B, N, hidden), zero at padded atoms."""

    def __init__(self, config: Conformer3DEncoderConfig):
        super().__init__()
        self.config = config
        self.atom_embedding = nn.Embedding(NUM_ELEMENT_TYPES, config.hidden_size, padding_idx=0)
        self.pair_bias = GaussianPairBias(config.num_gaussians, config.num_heads)
        self.layers = nn.ModuleList(UniMolLayer(config) for _ in range(config.num_layers))
        self.final_norm = nn.LayerNorm(config.hidden_size)

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    def forward(self, batch: ViewBatch) -> torch.Tensor:
        mask = batch.atom_mask
        pair = self.pair_bias(batch)
        x = self.atom_embedding(batch.element_indices)
        for layer in self.layers:
            x, pair = layer(x, pair, mask)
        return self.final_norm(x) * mask[..., None]
