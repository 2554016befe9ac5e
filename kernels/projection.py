"""Projection epilogue: linear projection + L2 normalisation (+ cast) of MQ-Former query outputs.

y = x W^T + b;  y = y / max(||y||_2, 1e-12)  (as ``F.normalize``);  cast to ``out_dtype``.
Arithmetic is float32. The fused Triton kernel is in ``kernels/triton_projection.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._checks import FLOAT_DTYPES, check_same_device, check_tensor
from .dispatch import use_triton

# Widest output row the Triton kernel keeps in one register tile (see triton_projection.py).
TRITON_MAX_D = 1024


def _check_projection_inputs(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out_dtype: torch.dtype | None
) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        raise TypeError("x must be a tensor of shape (..., Hin)")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"x has dtype {x.dtype}; expected one of {FLOAT_DTYPES}")
    check_tensor("weight", weight, 2)
    if weight.shape[1] != x.shape[-1]:
        raise ValueError(f"weight (D, Hin={weight.shape[1]}) does not match x (..., Hin={x.shape[-1]})")
    if bias is not None:
        check_tensor("bias", bias, 1)
        if bias.numel() != weight.shape[0]:
            raise ValueError(f"bias has {bias.numel()} entries, weight has D={weight.shape[0]} rows")
    if out_dtype is not None and out_dtype not in FLOAT_DTYPES:
        raise TypeError(f"out_dtype {out_dtype} not one of {FLOAT_DTYPES}")
    check_same_device(x=x, weight=weight, bias=bias)


def project_normalize_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Torch reference (float32 arithmetic, differentiable). Shapes as :func:`project_normalize`."""
    _check_projection_inputs(x, weight, bias, out_dtype)
    y = F.linear(x.float(), weight.float(), None if bias is None else bias.float())
    return F.normalize(y, dim=-1, eps=1e-12).to(out_dtype or x.dtype)


def project_normalize(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Linear projection + L2 normalisation + cast (dispatches Triton or torch).

    Args:
        x: (..., Hin) float32/float16/bfloat16.
        weight: (D, Hin); bias: (D,) or ``None``.
        out_dtype: output dtype (default ``x.dtype``), e.g. ``torch.float16`` for stored tokens.

    Returns:
        (..., D) unit-norm rows (zero rows stay zero) in ``out_dtype``.
    """
    _check_projection_inputs(x, weight, bias, out_dtype)
    if weight.shape[0] <= TRITON_MAX_D and use_triton(x, weight, bias):
        from .triton_projection import project_normalize_triton

        return project_normalize_triton(x, weight, bias, out_dtype)
    return project_normalize_reference(x, weight, bias, out_dtype)
