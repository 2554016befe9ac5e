"""Uni-Mol pair-distance attention bias (GaussianLayer + NonLinearHead), fused.

For atoms i, j of molecule b:
    d_ij = ||x_i - x_j||,  p = t_i * T + t_j  (T = sqrt(len(pair_mul)) atom types)
    x    = pair_mul[p] * d_ij + pair_add[p]
    g_k  = exp(-0.5 ((x - mu_k) / s_k)^2) / (sqrt(2 pi) s_k),  s_k = |stds_k| + 1e-5
    h    = gelu(g W1^T + b1)          (exact erf GELU)
    bias[b, :, i, j] = h W2^T + b2    (H heads)
and bias is exactly 0 where atom i or atom j is padding. Output (B, H, N, N) float32.

The reference materialises the (B, N, N, K) Gaussian features (as Uni-Mol does); the Triton kernel
in ``kernels/triton_pair_bias.py`` keeps them in registers and writes only the (B, H, N, N) output.

The eight learned tensors travel as one :class:`PairBiasWeights` bundle; each entry point takes
``(coords, atom_types, atom_mask, weights)`` or, positionally, the eight tensors in field order.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._checks import TRITON_MAX_HIDDEN, PairBiasWeights
from .dispatch import use_triton

__all__ = ["PairBiasWeights", "gaussian_pair_bias", "gaussian_pair_bias_reference"]


def gaussian_pair_bias_reference(
    coords: torch.Tensor,
    atom_types: torch.Tensor,
    atom_mask: torch.Tensor,
    *weights: PairBiasWeights | torch.Tensor,
) -> torch.Tensor:
    """Unfused torch reference (float32, differentiable). Arguments as :func:`gaussian_pair_bias`."""
    w = PairBiasWeights.of(*weights)
    n_types = w.check(coords, atom_types, atom_mask)
    x = coords.float()
    dist = (x.unsqueeze(2) - x.unsqueeze(1)).norm(dim=-1)  # (B, N, N)
    types = torch.where(atom_mask, atom_types.long(), torch.zeros_like(atom_types, dtype=torch.long))
    pair = types.unsqueeze(2) * n_types + types.unsqueeze(1)  # (B, N, N)
    xg = w.pair_mul.float()[pair] * dist + w.pair_add.float()[pair]
    std = w.stds.float().abs() + 1e-5
    g = torch.exp(-0.5 * ((xg.unsqueeze(-1) - w.means.float()) / std) ** 2) / (math.sqrt(2 * math.pi) * std)
    h = F.gelu(F.linear(g, w.w1.float(), w.b1.float()))  # (B, N, N, Kh)
    out = F.linear(h, w.w2.float(), w.b2.float()).permute(0, 3, 1, 2)  # (B, H, N, N)
    valid = atom_mask.unsqueeze(2) & atom_mask.unsqueeze(1)
    return out.masked_fill(~valid.unsqueeze(1), 0.0).contiguous()


def gaussian_pair_bias(
    coords: torch.Tensor,
    atom_types: torch.Tensor,
    atom_mask: torch.Tensor,
    *weights: PairBiasWeights | torch.Tensor,
) -> torch.Tensor:
    """Per-head attention bias from 3D coordinates (dispatches Triton or torch).

    Args:
        coords: (B, N, 3) float coordinates.
        atom_types: (B, N) int64 atom-type ids in [0, T) (ignored where atom_mask is False).
        atom_mask: (B, N) bool, True = real atom.
        weights: one :class:`PairBiasWeights`, or its eight tensors in field order
            (pair_mul, pair_add: (T*T,); means, stds: (K,); w1: (Kh, K), b1: (Kh,), w2: (H, Kh),
            b2: (H,)).

    Returns:
        (B, H, N, N) float32 bias; exactly 0 where atom i or j is padding.
    """
    w = PairBiasWeights.of(*weights)
    w.check(coords, atom_types, atom_mask)
    # the Triton kernel keeps Kh / H wide tiles on chip
    fits = max(w.hidden_size, w.num_heads) <= TRITON_MAX_HIDDEN
    if fits and use_triton(coords, atom_types, atom_mask, *w.tensors()):
        from .triton_pair_bias import gaussian_pair_bias_triton

        return gaussian_pair_bias_triton(coords, atom_types, atom_mask, w)
    return gaussian_pair_bias_reference(coords, atom_types, atom_mask, w)
