"""Cross-attention of the MQ-Former's K learnable query tokens over one view's atom tokens.

out[g, h] = softmax(q[g, h] k[g, h]^T * scale, keys masked by key_mask[g]) v[g, h]

``G`` indexes (view, molecule) groups: the model stacks the 2D-graph and 3D-conformer views of a
batch along ``G`` (padding both to a common N) so one launch serves both views. A group whose keys
are all padding returns zeros. The fused Triton kernel (online softmax, flash-attention style) is
in ``kernels/triton_cross_attention.py``.
"""

from __future__ import annotations

import torch

from ._checks import check_attention_inputs
from .dispatch import use_triton


def query_cross_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor,
    scale: float | None = None,
) -> torch.Tensor:
    """Torch reference: explicit masked softmax in float32 (differentiable; no SDPA so that fully
    padded groups give exact zeros, deterministically). Shapes as :func:`query_cross_attention`."""
    check_attention_inputs(q, k, v, key_mask)
    sc = q.shape[-1] ** -0.5 if scale is None else float(scale)
    s = torch.matmul(q.float(), k.float().transpose(-1, -2)) * sc  # (G, H, K, N)
    s = s.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    m = s.amax(dim=-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m)).detach()
    p = torch.exp(s - m)
    denom = p.sum(dim=-1, keepdim=True)
    p = p / denom.clamp_min(1e-30)  # all-masked rows: p == 0 everywhere -> output 0
    return torch.matmul(p, v.float()).to(q.dtype)


def query_cross_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor,
    scale: float | None = None,
) -> torch.Tensor:
    """Masked cross-attention of query tokens over atom tokens (dispatches Triton or torch).

    Args:
        q: (G, H, K, dh) query tokens (float32/float16/bfloat16; any strides).
        k: (G, H, N, dh) keys, same dtype as q.
        v: (G, H, N, dh) values, same dtype as q.
        key_mask: (G, N) bool, True = valid key (atom); False = padding.
        scale: logit scale, default ``dh ** -0.5``.

    Returns:
        (G, H, K, dh) in q's dtype; accumulation is float32. Groups with no valid key give zeros.
    """
    check_attention_inputs(q, k, v, key_mask)
    if use_triton(q, k, v, key_mask):
        from .triton_cross_attention import query_cross_attention_triton

        return query_cross_attention_triton(q, k, v, key_mask, scale)
    return query_cross_attention_reference(q, k, v, key_mask, scale)
