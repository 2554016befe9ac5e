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
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._checks import check_same_device, check_tensor
from .dispatch import use_triton

_F32 = (torch.float32,)
_PARAM_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _check_pair_bias_inputs(
    coords: torch.Tensor,
    atom_types: torch.Tensor,
    atom_mask: torch.Tensor,
    pair_mul: torch.Tensor,
    pair_add: torch.Tensor,
    means: torch.Tensor,
    stds: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
) -> int:
    check_tensor("coords", coords, 3)
    if coords.shape[2] != 3:
        raise ValueError(f"coords must be (B, N, 3), got {tuple(coords.shape)}")
    b, n = coords.shape[:2]
    check_tensor("atom_types", atom_types, 2, (torch.int64, torch.int32))
    check_tensor("atom_mask", atom_mask, 2, (torch.bool,))
    for name, t in (("atom_types", atom_types), ("atom_mask", atom_mask)):
        if tuple(t.shape) != (b, n):
            raise ValueError(f"{name} shape {tuple(t.shape)} != (B, N) {(b, n)}")
    for name, t in (("pair_mul", pair_mul), ("pair_add", pair_add), ("means", means), ("stds", stds)):
        check_tensor(name, t, 1, _PARAM_DTYPES)
    n_types = math.isqrt(pair_mul.numel())
    if n_types * n_types != pair_mul.numel() or n_types == 0:
        raise ValueError(f"len(pair_mul)={pair_mul.numel()} is not a positive square T*T")
    if pair_add.numel() != pair_mul.numel():
        raise ValueError(f"pair_add has {pair_add.numel()} entries, pair_mul {pair_mul.numel()}")
    kg = means.numel()
    if stds.numel() != kg:
        raise ValueError(f"means ({kg}) and stds ({stds.numel()}) must have the same length K")
    check_tensor("w1", w1, 2, _PARAM_DTYPES)
    check_tensor("b1", b1, 1, _PARAM_DTYPES)
    check_tensor("w2", w2, 2, _PARAM_DTYPES)
    check_tensor("b2", b2, 1, _PARAM_DTYPES)
    if w1.shape[1] != kg or b1.numel() != w1.shape[0]:
        raise ValueError(f"w1 must be (Kh, K={kg}) with b1 (Kh,), got {tuple(w1.shape)}, {tuple(b1.shape)}")
    if w2.shape[1] != w1.shape[0] or b2.numel() != w2.shape[0]:
        raise ValueError(
            f"w2 must be (H, Kh={w1.shape[0]}) with b2 (H,), got {tuple(w2.shape)}, {tuple(b2.shape)}"
        )
    check_same_device(
        coords=coords, atom_types=atom_types, atom_mask=atom_mask, pair_mul=pair_mul, pair_add=pair_add,
        means=means, stds=stds, w1=w1, b1=b1, w2=w2, b2=b2,
    )  # fmt: skip
    return n_types


def gaussian_pair_bias_reference(
    coords: torch.Tensor,
    atom_types: torch.Tensor,
    atom_mask: torch.Tensor,
    pair_mul: torch.Tensor,
    pair_add: torch.Tensor,
    means: torch.Tensor,
    stds: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
) -> torch.Tensor:
    """Unfused torch reference (float32, differentiable). Shapes as :func:`gaussian_pair_bias`."""
    n_types = _check_pair_bias_inputs(
        coords, atom_types, atom_mask, pair_mul, pair_add, means, stds, w1, b1, w2, b2
    )
    x = coords.float()
    dist = (x.unsqueeze(2) - x.unsqueeze(1)).norm(dim=-1)  # (B, N, N)
    types = torch.where(atom_mask, atom_types.long(), torch.zeros_like(atom_types, dtype=torch.long))
    pair = types.unsqueeze(2) * n_types + types.unsqueeze(1)  # (B, N, N)
    xg = pair_mul.float()[pair] * dist + pair_add.float()[pair]
    std = stds.float().abs() + 1e-5
    g = torch.exp(-0.5 * ((xg.unsqueeze(-1) - means.float()) / std) ** 2) / (math.sqrt(2 * math.pi) * std)
    h = F.gelu(F.linear(g, w1.float(), b1.float()))  # (B, N, N, Kh)
    out = F.linear(h, w2.float(), b2.float()).permute(0, 3, 1, 2)  # (B, H, N, N)
    valid = atom_mask.unsqueeze(2) & atom_mask.unsqueeze(1)
    return out.masked_fill(~valid.unsqueeze(1), 0.0).contiguous()


def gaussian_pair_bias(
    coords: torch.Tensor,
    atom_types: torch.Tensor,
    atom_mask: torch.Tensor,
    pair_mul: torch.Tensor,
    pair_add: torch.Tensor,
    means: torch.Tensor,
    stds: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
) -> torch.Tensor:
    """Per-head attention bias from 3D coordinates (dispatches Triton or torch).

    Args:
        coords: (B, N, 3) float coordinates.
        atom_types: (B, N) int64 atom-type ids in [0, T) (ignored where atom_mask is False).
        atom_mask: (B, N) bool, True = real atom.
        pair_mul, pair_add: (T*T,) per-type-pair affine of the distance (Uni-Mol ``mul``/``bias``).
        means, stds: (K,) Gaussian centres / widths.
        w1: (Kh, K), b1: (Kh,), w2: (H, Kh), b2: (H,): the NonLinearHead.

    Returns:
        (B, H, N, N) float32 bias; exactly 0 where atom i or j is padding.
    """
    _check_pair_bias_inputs(coords, atom_types, atom_mask, pair_mul, pair_add, means, stds, w1, b1, w2, b2)
    fits = max(w1.shape[0], w2.shape[0]) <= 256  # the Triton kernel keeps Kh / H wide tiles on chip
    if fits and use_triton(coords, atom_types, atom_mask, pair_mul, pair_add, means, stds, w1, b1, w2, b2):
        from .triton_pair_bias import gaussian_pair_bias_triton

        return gaussian_pair_bias_triton(
            coords, atom_types, atom_mask, pair_mul, pair_add, means, stds, w1, b1, w2, b2
        )
    return gaussian_pair_bias_reference(
        coords, atom_types, atom_mask, pair_mul, pair_add, means, stds, w1, b1, w2, b2
    )
