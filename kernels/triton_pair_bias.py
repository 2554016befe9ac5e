"""Fused Triton Uni-Mol pair-distance bias (distance -> Gaussian basis -> MLP -> per-head bias).

Imported lazily by ``kernels.pair_bias``; model code calls ``gaussian_pair_bias``.

Blocking strategy
-----------------
Grid = (cdiv(N, BLOCK_I) * cdiv(N, BLOCK_J), B). A program owns a BLOCK_I x BLOCK_J tile of atom
pairs of one molecule, flattened to ``BLOCK_P = BLOCK_I * BLOCK_J`` rows, and computes everything
for them in registers:

1. gathers both atoms' coordinates and types, d = ||x_i - x_j||, x = mul[p] * d + add[p];
2. loops over the K Gaussians in ``BLOCK_KC`` chunks: computes that (BLOCK_P, BLOCK_KC) slice of
   the basis g and accumulates hid += g_chunk W1[:, chunk]^T, so g - the B x N x N x K tensor the
   unfused reference materialises - only ever exists as a register slice;
3. h = gelu(hid + b1) (exact erf GELU), out = h W2^T + b2 (the Kh-wide hidden layer stays on
   chip too);
4. zeroes pairs with a padded atom and stores the (BLOCK_P, H) tile into (B, H, N, N): for each
   head the BLOCK_J pairs of a row are contiguous, so stores are coalesced.

* ``BLOCK_J`` = next_pow2(N) clamped to [8, 32] (32 floats = one 128-byte line per row and head),
  ``BLOCK_I`` = 128 // BLOCK_J rows (capped near N): BLOCK_P = 128 pairs on 8 warps. With
  Uni-Mol's K = Kh = 128, H = 64: hid (128 x 128 float32) + out (128 x 64) fit in registers.
  Exact ``ieee`` FMA dots (a benchmark/debug option on GPU; tf32x3 is the default) use 64 pairs
  on 16 warps.
* ``BLOCK_KC`` = 32 Gaussians per step; W1 / W2 (~100 KiB together) are read from L2.
* ``BLOCK_KH`` = next_pow2(Kh) and ``BLOCK_H`` = next_pow2(H), both <= 256 (else the dispatcher
  uses the reference).
* Register counts were checked by compiling for sm_90 with ptxas (no GPU here), with the same
  argument specialisation as a real launch: no spills for tf32x3 / tf32 / ieee. An earlier layout that kept the whole g tile live and looped over Kh
  spilled ~800 B per thread.
* The only HBM traffic is coordinates/types in and B*H*N*N*4 bytes out.

Precision: all inputs are converted to float32. On a GPU the dots use ``tf32x3`` (three tf32
tensor-core products, ~float32 accuracy); under TRITON_INTERPRET dots are exact float32 anyway.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._checks import TRITON_MAX_HIDDEN, PairBiasWeights, next_pow2
from .dispatch import interpreter_enabled

_INTERPRET = interpreter_enabled()  # decided at import, like Triton itself does
_PRECISIONS = ("ieee", "tf32x3", "tf32")
MAX_HIDDEN = TRITON_MAX_HIDDEN  # the (BLOCK_P, Kh) hidden tile and the (Kh, H) W2 tile must fit on chip


@triton.jit
def _pair_bias_kernel(
    xyz_ptr,
    type_ptr,
    mask_ptr,
    mul_ptr,
    add_ptr,
    mean_ptr,
    std_ptr,
    w1_ptr,
    b1_ptr,
    w2_ptr,
    b2_ptr,
    out_ptr,
    N,
    NT,
    KG,
    KH,
    H,
    n_jblocks,
    s_xb,
    s_xn,
    s_xc,
    s_tb,
    s_tn,
    s_mb,
    s_mn,
    PRECISION: tl.constexpr,
    BLOCK_I: tl.constexpr,
    BLOCK_J: tl.constexpr,
    BLOCK_KC: tl.constexpr,
    BLOCK_KH: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    BLOCK_P: tl.constexpr = BLOCK_I * BLOCK_J
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_p = tl.arange(0, BLOCK_P)
    ii = (pid // n_jblocks) * BLOCK_I + offs_p // BLOCK_J
    jj = (pid % n_jblocks) * BLOCK_J + offs_p % BLOCK_J
    i_in = ii < N
    j_in = jj < N

    # Pair geometry and type-pair affine, one value per pair.
    mi = tl.load(mask_ptr + b * s_mb + ii * s_mn, mask=i_in, other=0) != 0
    mj = tl.load(mask_ptr + b * s_mb + jj * s_mn, mask=j_in, other=0) != 0
    pair_ok = mi & mj
    xi_base = xyz_ptr + b * s_xb + ii * s_xn
    xj_base = xyz_ptr + b * s_xb + jj * s_xn
    dx = tl.load(xi_base, mask=i_in, other=0.0) - tl.load(xj_base, mask=j_in, other=0.0)
    dy = tl.load(xi_base + s_xc, mask=i_in, other=0.0) - tl.load(xj_base + s_xc, mask=j_in, other=0.0)
    dz = tl.load(xi_base + 2 * s_xc, mask=i_in, other=0.0) - tl.load(xj_base + 2 * s_xc, mask=j_in, other=0.0)
    dist = tl.sqrt(dx * dx + dy * dy + dz * dz)
    ti = tl.load(type_ptr + b * s_tb + ii * s_tn, mask=mi, other=0)
    tj = tl.load(type_ptr + b * s_tb + jj * s_tn, mask=mj, other=0)
    pidx = ti * NT + tj
    xg = tl.load(mul_ptr + pidx, mask=pair_ok, other=0.0) * dist + tl.load(
        add_ptr + pidx, mask=pair_ok, other=0.0
    )

    # hidden = g W1^T accumulated over BLOCK_KC-wide chunks of the Gaussian basis, so only a
    # (BLOCK_P, BLOCK_KC) slice of g is ever live; padded k / hidden columns contribute exactly 0.
    offs_c = tl.arange(0, BLOCK_KH)
    c_ok = offs_c < KH
    hid = tl.zeros((BLOCK_P, BLOCK_KH), tl.float32)
    for k0 in range(0, KG, BLOCK_KC):
        offs_k = k0 + tl.arange(0, BLOCK_KC)
        k_ok = offs_k < KG
        mu = tl.load(mean_ptr + offs_k, mask=k_ok, other=0.0)
        inv_std = 1.0 / (tl.abs(tl.load(std_ptr + offs_k, mask=k_ok, other=1.0)) + 1e-5)
        coef = tl.where(k_ok, inv_std * 0.3989422804014327, 0.0)  # 1 / (sqrt(2 pi) std)
        z = (xg[:, None] - mu[None, :]) * inv_std[None, :]
        g = tl.exp(-0.5 * z * z) * coef[None, :]
        w1t = tl.load(
            w1_ptr + offs_c[None, :] * KG + offs_k[:, None], mask=k_ok[:, None] & c_ok[None, :], other=0.0
        )  # (BLOCK_KC, BLOCK_KH) = W1[:, chunk]^T
        hid = tl.dot(g, w1t, hid, input_precision=PRECISION)
    hid += tl.load(b1_ptr + offs_c, mask=c_ok, other=0.0)[None, :]
    hid = 0.5 * hid * (1.0 + tl.erf(hid * 0.7071067811865476))  # exact GELU

    offs_h = tl.arange(0, BLOCK_H)
    h_ok = offs_h < H
    w2t = tl.load(
        w2_ptr + offs_h[None, :] * KH + offs_c[:, None], mask=c_ok[:, None] & h_ok[None, :], other=0.0
    )  # (BLOCK_KH, BLOCK_H) = W2^T
    acc = tl.dot(hid, w2t, input_precision=PRECISION)
    acc += tl.load(b2_ptr + offs_h, mask=h_ok, other=0.0)[None, :]
    acc = tl.where(pair_ok[:, None], acc, 0.0)

    # int64 via b / offs_h (no .to() on N: Triton specialises an int argument equal to 1 as constexpr)
    out_off = (b * H + offs_h[None, :].to(tl.int64)) * N * N + (ii * N + jj)[:, None]
    tl.store(out_ptr + out_off, acc, mask=(i_in & j_in)[:, None] & h_ok[None, :])


def gaussian_pair_bias_triton(
    coords: torch.Tensor,
    atom_types: torch.Tensor,
    atom_mask: torch.Tensor,
    *weights: PairBiasWeights | torch.Tensor,
    precision: str | None = None,
    block_i: int | None = None,
    block_j: int | None = None,
    block_kc: int | None = None,
) -> torch.Tensor:
    """Triton version of :func:`kernels.pair_bias.gaussian_pair_bias` (forward only).

    ``weights``: one :class:`PairBiasWeights` or its eight tensors in field order. Returns
    (B, H, N, N) float32. ``precision`` is the ``tl.dot`` input precision (default ``tf32x3`` on
    GPU, ``ieee`` in the interpreter); block sizes are overridable for tests.
    """
    w = PairBiasWeights.of(*weights)
    n_types = w.check(coords, atom_types, atom_mask)
    prec = precision or ("ieee" if _INTERPRET else "tf32x3")
    if prec not in _PRECISIONS:
        raise ValueError(f"precision must be one of {_PRECISIONS}, got {prec!r}")
    bsz, n, _ = coords.shape
    kg, kh, h = w.means.numel(), w.hidden_size, w.num_heads
    out = torch.empty((bsz, h, n, n), dtype=torch.float32, device=coords.device)
    if out.numel() == 0:
        return out
    f32 = [t.float().contiguous() for t in w.tensors()]
    xyz = coords.float()
    mask = atom_mask.view(torch.uint8)
    bj = block_j or min(32, max(8, next_pow2(n)))
    ieee_gpu = prec == "ieee" and not _INTERPRET  # FMA dots: far more registers per pair
    pairs = 64 if ieee_gpu else 128
    bi = block_i or max(16 // bj, min(pairs // bj, next_pow2(n)))
    if bi * bj < 16:
        raise ValueError(f"block_i * block_j must be >= 16 (tl.dot), got {bi} x {bj}")
    bkc = block_kc or min(32, max(16, next_pow2(kg)))
    bkh = max(16, next_pow2(kh))
    if bkh > MAX_HIDDEN or h > MAX_HIDDEN:
        raise ValueError(f"Kh={kh} and H={h} must be <= {MAX_HIDDEN} for the Triton kernel")
    n_jb = triton.cdiv(n, bj)
    grid = (triton.cdiv(n, bi) * n_jb, bsz)
    _pair_bias_kernel[grid](
        xyz, atom_types, mask, *f32, out,
        n, n_types, kg, kh, h, n_jb,
        *xyz.stride(), *atom_types.stride(), *mask.stride(),
        PRECISION=prec, BLOCK_I=bi, BLOCK_J=bj, BLOCK_KC=bkc, BLOCK_KH=bkh,
        BLOCK_H=max(16, next_pow2(h)),
        num_warps=16 if ieee_gpu else (8 if bi * bj >= 64 else 4),
    )  # fmt: skip
    return out
