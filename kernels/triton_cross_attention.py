"""Fused Triton cross-attention of query tokens over atom tokens (flash-attention style).

Imported lazily by ``kernels.cross_attention``; model code calls ``query_cross_attention``.

Blocking strategy
-----------------
Grid = (G * H, cdiv(K, BLOCK_K)): one program owns ``BLOCK_K`` query tokens of one (group, head).
It keeps the (BLOCK_K, dh) query tile, the float32 output accumulator and the running row max /
row sum in registers and streams the group's keys and values in ``BLOCK_N``-row blocks:
S = Q K^T (scaled by scale*log2(e) so ``exp2`` can be used), masked keys set to -inf, online
softmax rescaling of the accumulator, acc += P V. Neither the (K, N) score matrix nor the
probabilities are written to memory. Fully padded groups keep a row sum of 0 and store zeros.

* ``BLOCK_K`` = next_pow2(K) clamped to [16, 64]: the MQ-Former has few query tokens (tens), so
  usually one program covers all of them and K/V are read exactly once per (group, head).
* ``BLOCK_N`` = 64 keys per step (32 when dh > 64 to bound registers): molecules have tens to a
  few hundred atoms, so a handful of steps per program.
* ``BLOCK_DH`` = next_pow2(dh) (>= 16 for ``tl.dot``); the head dim is not split.
* G * H on grid axis 0 (no 65535 limit there: large batches x heads fit); the few K blocks on
  axis 1.

Both views of a batch go in one launch by stacking them along G (padded to one N). Arbitrary
strides are accepted, so head-split views of projections need no copy. float32 inputs use exact
``ieee`` dots; float16/bfloat16 use tensor cores with P cast to the input dtype for P V (as in
FlashAttention); under TRITON_INTERPRET bfloat16 is converted to float32 right after loading.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._checks import check_attention_inputs, next_pow2
from .dispatch import interpreter_enabled

_INTERPRET = interpreter_enabled()  # decided at import, like Triton itself does
_LOG2E = 1.4426950408889634


@triton.jit
def _cross_attn_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    mask_ptr,
    o_ptr,
    H,
    K,
    N,
    DH,
    qk_scale,
    sq_g,
    sq_h,
    sq_k,
    sq_d,
    sk_g,
    sk_h,
    sk_n,
    sk_d,
    sv_g,
    sv_h,
    sv_n,
    sv_d,
    sm_g,
    sm_n,
    so_g,
    so_h,
    so_k,
    so_d,
    UPCAST: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_DH: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    pid_gh = tl.program_id(0)
    pid_k = tl.program_id(1)
    g = (pid_gh // H).to(tl.int64)
    h = (pid_gh % H).to(tl.int64)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_d = tl.arange(0, BLOCK_DH)
    offs_n0 = tl.arange(0, BLOCK_N)
    k_ok = offs_k < K
    d_ok = offs_d < DH

    q = tl.load(
        q_ptr + g * sq_g + h * sq_h + offs_k[:, None] * sq_k + offs_d[None, :] * sq_d,
        mask=k_ok[:, None] & d_ok[None, :],
        other=0.0,
    )
    if UPCAST:
        q = q.to(tl.float32)
    k_base = k_ptr + g * sk_g + h * sk_h
    v_base = v_ptr + g * sv_g + h * sv_h
    m_base = mask_ptr + g * sm_g

    m_i = tl.full((BLOCK_K,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_K,), tl.float32)
    acc = tl.zeros((BLOCK_K, BLOCK_DH), tl.float32)
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + offs_n0
        n_ok = offs_n < N
        valid = n_ok & (tl.load(m_base + offs_n * sm_n, mask=n_ok, other=0) != 0)
        kt = tl.load(
            k_base + offs_d[:, None] * sk_d + offs_n[None, :] * sk_n,
            mask=d_ok[:, None] & n_ok[None, :],
            other=0.0,
        )  # (BLOCK_DH, BLOCK_N)
        v = tl.load(
            v_base + offs_n[:, None] * sv_n + offs_d[None, :] * sv_d,
            mask=n_ok[:, None] & d_ok[None, :],
            other=0.0,
        )  # (BLOCK_N, BLOCK_DH)
        if UPCAST:
            kt = kt.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, kt, input_precision=DOT_PREC) * qk_scale
        s = tl.where(valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # all keys so far masked
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PREC)
        m_i = m_new
    out = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]  # l_i == 0 <=> no valid key: acc is 0
    tl.store(
        o_ptr + g * so_g + h * so_h + offs_k[:, None] * so_k + offs_d[None, :] * so_d,
        out.to(o_ptr.dtype.element_ty),
        mask=k_ok[:, None] & d_ok[None, :],
    )


def query_cross_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor,
    scale: float | None = None,
    *,
    block_k: int | None = None,
    block_n: int | None = None,
) -> torch.Tensor:
    """Triton version of :func:`kernels.cross_attention.query_cross_attention` (forward only).

    Returns (G, H, K, dh) in q's dtype. Block sizes are overridable for tests.
    """
    check_attention_inputs(q, k, v, key_mask)
    g, h, kq, dh = q.shape
    n = k.shape[2]
    sc = dh**-0.5 if scale is None else float(scale)
    if not math.isfinite(sc):
        raise ValueError(f"scale must be finite, got {sc}")
    out = torch.empty((g, h, kq, dh), dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    if n == 0:
        return out.zero_()
    upcast = _INTERPRET and q.dtype == torch.bfloat16
    bdh = max(16, next_pow2(dh))
    bk = block_k or min(64, max(16, next_pow2(kq)))
    bn = block_n or (64 if bdh <= 64 else 32)
    mask = key_mask.view(torch.uint8)
    grid = (g * h, triton.cdiv(kq, bk))
    _cross_attn_kernel[grid](
        q, k, v, mask, out,
        h, kq, n, dh, sc * _LOG2E,
        *q.stride(), *k.stride(), *v.stride(), *mask.stride(), *out.stride(),
        UPCAST=upcast, BLOCK_K=bk, BLOCK_N=bn, BLOCK_DH=bdh,
        DOT_PREC="ieee" if (upcast or q.dtype == torch.float32) else "tf32",  # tf32: unused for half
        num_warps=8 if (upcast or q.dtype == torch.float32) else 4,  # float32 FMA dots: no spills
    )  # fmt: skip
    return out
