"""Fused Triton projection epilogue: y = x W^T + b, L2-normalise rows, cast (e.g. to float16).

Imported lazily by ``kernels.projection``; model code calls ``project_normalize``.

Blocking strategy
-----------------
Grid = cdiv(R, BLOCK_R) over the flattened rows R = prod(x.shape[:-1]). A program owns BLOCK_R
complete output rows: the (BLOCK_R, D) float32 accumulator holds the whole embedding width, so
the row norm is computed in registers right after the GEMM and the normalised, cast row is written
once (no float32 (R, D) intermediate, no second pass). The input width Hin is streamed in
``BLOCK_HIN``-column chunks of x and W (64 for half operands, 32 for float32 ones so that
three pipeline stages fit in shared memory).

* ``BLOCK_D`` = next_pow2(D) (D <= 1024; the dispatcher uses the reference beyond that).
* ``BLOCK_R`` = 16384 // BLOCK_D clamped to [16, 64] (32 for float32 operands, whose tf32x3
  split needs more registers): bounds the accumulator to 64 KiB (64 float32 registers per thread
  with 8 warps); D = 256 gives 64 rows per program. Checked with ptxas for sm_90: no spills.
* W (D x Hin, e.g. 256 x 768) is re-read by every program from L2; R is at most tens of
  thousands of rows per embedding batch, so this is cheap compared with launching a GEMM and
  a separate normalisation.

Precision: x and W of the same half dtype use tensor-core dots with float32 accumulation;
otherwise both are converted to float32 and use ``tf32x3`` on GPU (~float32 accuracy) or exact
``ieee`` in the interpreter (where bfloat16 is also converted to float32 right after loading).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._checks import TRITON_MAX_D, check_projection_inputs, next_pow2
from .dispatch import interpreter_enabled

_INTERPRET = interpreter_enabled()  # decided at import, like Triton itself does


@triton.jit
def _project_normalize_kernel(
    x_ptr,
    w_ptr,
    b_ptr,
    y_ptr,
    R,
    HIN,
    D,
    s_xr,
    s_xh,
    s_wd,
    s_wh,
    HAS_BIAS: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_HIN: tl.constexpr,
):
    pid = tl.program_id(0)
    offs_r = (pid * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    r_ok = offs_r < R
    d_ok = offs_d < D
    acc = tl.zeros((BLOCK_R, BLOCK_D), tl.float32)
    for h0 in range(0, HIN, BLOCK_HIN):
        offs_h = h0 + tl.arange(0, BLOCK_HIN)
        h_ok = offs_h < HIN
        xt = tl.load(
            x_ptr + offs_r[:, None] * s_xr + offs_h[None, :] * s_xh,
            mask=r_ok[:, None] & h_ok[None, :],
            other=0.0,
        )
        wt = tl.load(
            w_ptr + offs_d[None, :] * s_wd + offs_h[:, None] * s_wh,
            mask=h_ok[:, None] & d_ok[None, :],
            other=0.0,
        )  # (BLOCK_HIN, BLOCK_D) = W[:, chunk]^T
        if UPCAST:
            xt = xt.to(tl.float32)
            wt = wt.to(tl.float32)
        acc = tl.dot(xt, wt, acc, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_d, mask=d_ok, other=0.0).to(tl.float32)[None, :]
    norm = tl.sqrt(tl.sum(acc * acc, axis=1))
    y = acc / tl.maximum(norm, 1e-12)[:, None]
    tl.store(
        y_ptr + offs_r[:, None] * D + offs_d[None, :],
        y.to(y_ptr.dtype.element_ty),
        mask=r_ok[:, None] & d_ok[None, :],
    )


def project_normalize_triton(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype | None = None,
    *,
    block_r: int | None = None,
    block_hin: int | None = None,
) -> torch.Tensor:
    """Triton version of :func:`kernels.projection.project_normalize` (forward only).

    Returns (..., D) in ``out_dtype`` (default x.dtype). Block sizes are overridable for tests.
    """
    check_projection_inputs(x, weight, bias, out_dtype)
    d, hin = weight.shape
    if d > TRITON_MAX_D:
        raise ValueError(f"D={d} exceeds the Triton kernel's single-tile limit {TRITON_MAX_D}")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, hin)
    r = x2.shape[0]
    y = torch.empty((r, d), dtype=out_dtype or x.dtype, device=x.device)
    if y.numel() == 0:
        return y.view(*lead, d)
    native = x.dtype == weight.dtype and x.dtype in (torch.float16, torch.bfloat16)
    if native and _INTERPRET and x.dtype == torch.bfloat16:
        native = False
    # Mixed dtypes: one exact float32 copy of the (small) weight; x is converted after loading.
    w = weight if x.dtype == weight.dtype else weight.float()
    # float32 operands: exact in the interpreter, tf32x3 (~float32) on GPU; half operands: plain MMA
    prec = "tf32" if native else ("ieee" if _INTERPRET else "tf32x3")
    bd = max(16, next_pow2(d))
    # float32 operand chunks are twice as big: 32 columns keep 3 pipeline stages of the x and W
    # chunks within H100 shared memory (64 columns would need ~290 KiB at D = 256).
    bh = block_hin or (64 if native else 32)
    br = block_r or min(64 if native else 32, max(16, 16384 // bd))  # float32 operands: 32 rows
    b = bias.float().contiguous() if bias is not None else y  # placeholder pointer when no bias
    _project_normalize_kernel[(triton.cdiv(r, br),)](
        x2, w, b, y,
        r, hin, d,
        x2.stride(0), x2.stride(1), w.stride(0), w.stride(1),
        HAS_BIAS=bias is not None, UPCAST=not native, PRECISION=prec,
        BLOCK_R=br, BLOCK_D=bd, BLOCK_HIN=bh,
        num_warps=8 if br * bd >= 8192 else 4,
    )  # fmt: skip
    return y.view(*lead, d)
