"""Projection epilogue: linear projection + L2 normalisation (+ cast) of MQ-Former query outputs.

y = x W^T + b;  y = y / max(||y||_2, 1e-12)  (as ``F.normalize``);  cast to ``out_dtype``.
Arithmetic is float32. The fused Triton kernel is in ``kernels/triton_projection.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._checks import TRITON_MAX_D, check_projection_inputs
from .dispatch import use_triton


def project_normalize_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Torch reference (float32 arithmetic, differentiable). Shapes as :func:`project_normalize`."""
    check_projection_inputs(x, weight, bias, out_dtype)
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
    check_projection_inputs(x, weight, bias, out_dtype)
    if weight.shape[0] <= TRITON_MAX_D and use_triton(x, weight, bias):
        from .triton_projection import project_normalize_triton

        return project_normalize_triton(x, weight, bias, out_dtype)
    return project_normalize_reference(x, weight, bias, out_dtype)
