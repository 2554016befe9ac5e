"""Fused Triton MaxSim kernels (imported lazily by ``kernels.maxsim``; never call these from model code).

Blocking strategy
-----------------
One program owns a tile of ``BLOCK_T`` texts x ``BLOCK_M`` molecules. It walks its molecules one at a
time: the molecule's (Q, D) token block is loaded once (``BLOCK_Q = next_pow2(Q)`` rows, so a
molecule's tokens are one contiguous load of Q*D elements), multiplied with the text tile by
``tl.dot`` (float32 accumulation) and reduced with max/arg-max over tokens in registers. Only the
(BLOCK_T, BLOCK_M) score tile leaves the program, so the (T, M, Q) similarity tensor never exists.

* ``BLOCK_T`` = next_pow2(T) clamped to [16, 64] (32 for float32 or hi/lo-split dots, which need
  more registers per row): ``tl.dot`` needs >= 16 rows. For small T (search batches) the token
  stream dominates traffic, i.e. the kernel is memory-bound by design; larger T re-reads a
  molecule block once per text block, mostly from L2 (see the grid order below).
  8 warps from 32 rows up and for float32 dots, 4 otherwise.
* ``BLOCK_D`` = next_pow2(D) up to 256: for D <= 256 the molecule loop has no inner loop, so it is
  the innermost loop and Triton software-pipelines it (``num_stages=3``: the next molecules'
  token blocks are in flight via cp.async while the current one is multiplied); beyond 256 a
  loop over D. The small text tile is re-read per molecule (an L1 hit).
* Checked by compiling for sm_90 with ptxas (no GPU here), with a real launch's argument
  specialisation: loads pipelined, no register spills, 74 KiB shared memory at BLOCK_T = 16.
* ``BLOCK_M`` = 32 molecules per program (amortises the text-tile load and the program start);
  for top-k it grows to keep the partial list at most a quarter of the block.
* The grid is 1-D with the text block varying fastest, so programs that share a molecule block run
  back to back and the second and later text blocks read its tokens from L2, not HBM; 1-D also
  avoids the 65535 limit on grid axes 1/2 for catalogue-sized M.
* Offsets that scale with M (token rows, outputs) are int64: M*Q*D exceeds 2**31 for large tables.

Top-k is two-pass: each program extracts the top ``K_PART = min(k, BLOCK_M)`` of its score tile
(repeated max with exact tie-break on the lower index) into a (T, n_blocks, K_PART) buffer, and a
torch stable-sort merge picks the final k. The (T, M) score matrix is never written.

Dtypes: float32 tokens use exact ``ieee`` dots (no tf32). float16/bfloat16 tokens use tensor-core
dots; float32 queries against half tokens are split into hi + lo halves (two dots) so the result
keeps ~float32 accuracy. Under TRITON_INTERPRET, bfloat16 loads are converted to float32 at once
(the interpreter mishandles bfloat16).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._checks import check_maxsim_inputs, merge_topk, next_pow2
from .dispatch import interpreter_enabled

# Decided when this module (and so its @triton.jit functions) is imported, like Triton itself does.
_INTERPRET = interpreter_enabled()
_NO_MOLECULE = torch.iinfo(torch.int64).max  # index of empty partial-top-k slots: loses every tie


@triton.jit
def _dot_chunk(
    sim, q_ptr, qlo_ptr, tok_base, d0, offs_t, offs_d, offs_q, t_ok, q_ok, D,
    stride_qt, stride_qd, stride_tq, stride_td,
    SPLIT_Q: tl.constexpr, TOK_UPCAST: tl.constexpr, DOT_PREC: tl.constexpr,
):  # fmt: skip
    """sim += texts[:, d0:d0+BLOCK_D] @ tokens[m, :, d0:d0+BLOCK_D]^T (float32 accumulation)."""
    dd = d0 + offs_d
    qm = t_ok[:, None] & (dd < D)[None, :]
    q_off = offs_t[:, None] * stride_qt + dd[None, :] * stride_qd
    qt = tl.load(q_ptr + q_off, mask=qm, other=0.0)
    tk = tl.load(
        tok_base + offs_q[:, None] * stride_tq + dd[None, :] * stride_td,
        mask=q_ok[:, None] & (dd < D)[None, :],
        other=0.0,
    )  # (BLOCK_Q, BLOCK_D), row-major like the table; transposed on chip for the dot
    if TOK_UPCAST:
        tk = tk.to(tl.float32)
    tk = tl.trans(tk)
    sim = tl.dot(qt, tk, sim, input_precision=DOT_PREC)
    if SPLIT_Q:
        qlo = tl.load(qlo_ptr + q_off, mask=qm, other=0.0)
        sim = tl.dot(qlo, tk, sim, input_precision=DOT_PREC)
    return sim


@triton.jit
def _maxsim_kernel(
    q_ptr,
    qlo_ptr,
    tok_ptr,
    mask_ptr,
    score_ptr,
    best_ptr,
    part_s_ptr,
    part_i_ptr,
    part_b_ptr,
    T,
    M,
    Q,
    D,
    n_tblocks,
    n_mblocks,
    stride_qt,
    stride_qd,
    stride_tm,
    stride_tq,
    stride_td,
    stride_mm,
    stride_mq,
    HAS_MASK: tl.constexpr,
    SPLIT_Q: tl.constexpr,
    TOK_UPCAST: tl.constexpr,
    WRITE_SCORES: tl.constexpr,
    WRITE_BEST: tl.constexpr,
    K_PART: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DOT_PREC: tl.constexpr,
    ONE_D: tl.constexpr,
):
    pid = tl.program_id(0)
    pid_t = pid % n_tblocks
    pid_m = pid // n_tblocks
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_q = tl.arange(0, BLOCK_Q)
    offs_d = tl.arange(0, BLOCK_D)
    cols = tl.arange(0, BLOCK_M)
    t_ok = offs_t < T
    q_ok = offs_q < Q
    m0 = pid_m.to(tl.int64) * BLOCK_M
    n_here = tl.minimum(M - m0, BLOCK_M).to(tl.int32)

    score_tile = tl.full((BLOCK_T, BLOCK_M), float("-inf"), tl.float32)
    best_tile = tl.full((BLOCK_T, BLOCK_M), -1, tl.int32)
    for j in tl.range(0, n_here, num_stages=3):
        tok_base = tok_ptr + (m0 + j) * stride_tm
        sim = tl.zeros((BLOCK_T, BLOCK_Q), tl.float32)
        if ONE_D:
            # D <= BLOCK_D: no inner loop, so the molecule loop is the innermost one and Triton's
            # software pipeliner overlaps the next molecules' token loads with this dot.
            sim = _dot_chunk(
                sim, q_ptr, qlo_ptr, tok_base, 0, offs_t, offs_d, offs_q, t_ok, q_ok, D,
                stride_qt, stride_qd, stride_tq, stride_td, SPLIT_Q, TOK_UPCAST, DOT_PREC,
            )  # fmt: skip
        else:
            for d0 in range(0, D, BLOCK_D):
                sim = _dot_chunk(
                    sim, q_ptr, qlo_ptr, tok_base, d0, offs_t, offs_d, offs_q, t_ok, q_ok, D,
                    stride_qt, stride_qd, stride_tq, stride_td, SPLIT_Q, TOK_UPCAST, DOT_PREC,
                )  # fmt: skip
        valid = q_ok
        if HAS_MASK:
            mv = tl.load(mask_ptr + (m0 + j) * stride_mm + offs_q * stride_mq, mask=q_ok, other=0)
            valid = valid & (mv != 0)
        sim = tl.where(valid[None, :], sim, float("-inf"))
        s = tl.max(sim, axis=1)
        score_tile = tl.where(cols[None, :] == j, s[:, None], score_tile)
        if WRITE_BEST:
            a = tl.argmax(sim, axis=1, tie_break_left=True).to(tl.int32)
            any_valid = tl.max(valid.to(tl.int32), axis=0) > 0
            a = tl.where(any_valid, a, -1)
            best_tile = tl.where(cols[None, :] == j, a[:, None], best_tile)

    row64 = offs_t.to(tl.int64)
    if WRITE_SCORES:
        out_off = row64[:, None] * M + (m0 + cols)[None, :]
        out_mask = t_ok[:, None] & (cols < n_here)[None, :]
        tl.store(score_ptr + out_off, score_tile, mask=out_mask)
        if WRITE_BEST:
            tl.store(best_ptr + out_off, best_tile.to(tl.int64), mask=out_mask)
    if K_PART > 0:
        # Partial top-K_PART of this tile: repeated (max, lowest index among equals) without
        # replacement; `taken` also marks columns past the end of M.
        taken = tl.broadcast_to((cols >= n_here)[None, :], (BLOCK_T, BLOCK_M))
        part_base = (row64 * n_mblocks + pid_m) * K_PART
        for r in range(0, K_PART):
            v = tl.max(tl.where(taken, float("-inf"), score_tile), axis=1)
            hit = (~taken) & (score_tile == v[:, None])
            sel = tl.min(tl.where(hit, cols[None, :], BLOCK_M), axis=1)
            found = sel < BLOCK_M
            onehot = cols[None, :] == sel[:, None]
            b = tl.sum(tl.where(onehot, best_tile, 0), axis=1)
            taken = taken | onehot
            tl.store(part_s_ptr + part_base + r, tl.where(found, v, float("-inf")), mask=t_ok)
            tl.store(part_i_ptr + part_base + r, tl.where(found, m0 + sel, -1), mask=t_ok)
            tl.store(part_b_ptr + part_base + r, tl.where(found, b, -1).to(tl.int64), mask=t_ok)


def _prepare(queries: torch.Tensor, tokens: torch.Tensor):
    """Pick the dot operand dtypes (see module docstring). Returns (q, q_lo | None, tok_upcast)."""
    tdt = tokens.dtype
    if tdt == torch.float32:
        return queries.float(), None, False
    if _INTERPRET and tdt == torch.bfloat16:
        return queries.float(), None, True
    if queries.dtype == tdt:
        return queries, None, False
    if queries.dtype == torch.float32:
        hi = queries.to(tdt)
        return hi, (queries - hi.float()).to(tdt), False
    return queries.float(), None, True  # float16 vs bfloat16 mix: exact float32 dots


def _launch(
    queries: torch.Tensor,
    tokens: torch.Tensor,
    token_mask: torch.Tensor | None,
    *,
    k_part: int,
    write_scores: bool,
    write_best: bool,
    block_m: int,
    block_t: int | None,
    block_d: int | None,
):
    t, d = queries.shape
    m, q, _ = tokens.shape
    dev = queries.device
    q_hi, q_lo, tok_upcast = _prepare(queries, tokens)
    if q_lo is not None and q_lo.stride() != q_hi.stride():
        q_hi, q_lo = q_hi.contiguous(), q_lo.contiguous()
    f32_dot = tok_upcast or tokens.dtype == torch.float32
    # Register budget (checked with ptxas for sm_90: no spills): the hi/lo split and the float32
    # FMA dots hold more per text row, so they get at most 32 rows; float32 dots also take D in
    # 32-wide steps. 8 warps from 32 text rows up and for float32 dots.
    bt = block_t or min(32 if (f32_dot or q_lo is not None) else 64, max(16, next_pow2(t)))
    bq = max(16, next_pow2(q))
    bd = block_d or (32 if f32_dot else min(256, max(16, next_pow2(d))))
    n_tb, n_mb = triton.cdiv(t, bt), triton.cdiv(m, block_m)
    scores = torch.empty((t, m) if write_scores else (1,), dtype=torch.float32, device=dev)
    best = torch.empty((t, m) if write_scores and write_best else (1,), dtype=torch.int64, device=dev)
    pshape = (t, n_mb, k_part) if k_part > 0 else (1,)
    part_s = torch.empty(pshape, dtype=torch.float32, device=dev)
    part_i = torch.empty(pshape, dtype=torch.int64, device=dev)
    part_b = torch.empty(pshape, dtype=torch.int64, device=dev)
    if token_mask is not None:
        mask = token_mask.view(torch.uint8)  # bool -> uint8 is a free reinterpretation
        smm, smq = mask.stride()
    else:
        mask, smm, smq = tokens, 0, 0  # unused placeholder pointer
    if t > 0 and m > 0:
        _maxsim_kernel[(n_tb * n_mb,)](
            q_hi,
            q_lo if q_lo is not None else q_hi,
            tokens,
            mask,
            scores,
            best,
            part_s,
            part_i,
            part_b,
            t,
            m,
            q,
            d,
            n_tb,
            n_mb,
            q_hi.stride(0),
            q_hi.stride(1),
            tokens.stride(0),
            tokens.stride(1),
            tokens.stride(2),
            smm,
            smq,
            HAS_MASK=token_mask is not None,
            SPLIT_Q=q_lo is not None,
            TOK_UPCAST=tok_upcast,
            WRITE_SCORES=write_scores,
            WRITE_BEST=write_best,
            K_PART=k_part,
            BLOCK_T=bt,
            BLOCK_M=block_m,
            BLOCK_Q=bq,
            BLOCK_D=bd,
            # exact float32 dots when the operands are float32; ignored for half operands
            DOT_PREC="ieee" if f32_dot else "tf32",
            ONE_D=bd >= d,
            num_warps=8 if (bt >= 32 or f32_dot) else 4,
        )
    return scores, best, part_s, part_i, part_b


def _no_match_topk(t: int, kk: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-``kk`` when nothing can match (no texts, molecules or tokens), as the reference gives it:
    every score ``-inf``, so the ties go to molecules 0..kk-1, with best token ``-1``."""
    return (
        torch.full((t, kk), float("-inf"), dtype=torch.float32, device=device),
        torch.arange(kk, dtype=torch.int64, device=device).expand(t, kk).contiguous(),
        torch.full((t, kk), -1, dtype=torch.int64, device=device),
    )


def maxsim_triton(
    queries: torch.Tensor,
    tokens: torch.Tensor,
    token_mask: torch.Tensor | None = None,
    *,
    return_argmax: bool = True,
    block_m: int = 32,
    block_t: int | None = None,
    block_d: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Triton MaxSim: (scores (T, M) float32, best_token (T, M) int64 or ``None``).

    Same semantics as :func:`kernels.maxsim.maxsim_reference`; block sizes are overridable for tests.
    """
    check_maxsim_inputs(queries, tokens, token_mask)
    t, m = queries.shape[0], tokens.shape[0]
    if tokens.shape[1] == 0:
        return (
            torch.full((t, m), float("-inf"), device=queries.device),
            torch.full((t, m), -1, dtype=torch.int64, device=queries.device) if return_argmax else None,
        )
    scores, best, *_ = _launch(
        queries, tokens, token_mask, k_part=0, write_scores=True, write_best=return_argmax,
        block_m=block_m, block_t=block_t, block_d=block_d,
    )  # fmt: skip
    return scores, (best if return_argmax else None)


def maxsim_topk_triton(
    queries: torch.Tensor,
    tokens: torch.Tensor,
    token_mask: torch.Tensor | None = None,
    *,
    k: int,
    block_m: int | None = None,
    block_t: int | None = None,
    block_d: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton top-k MaxSim (two-pass: in-kernel per-block partial top-k, then a torch merge).

    Returns (scores (T, k'), molecule_index (T, k'), best_token (T, k')), k' = min(k, M), sorted
    by score descending with ties to the lower molecule index, exactly like the reference.
    """
    check_maxsim_inputs(queries, tokens, token_mask)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    t, m, q = queries.shape[0], tokens.shape[0], tokens.shape[1]
    kk = min(int(k), m)
    if kk == 0 or q == 0 or t == 0:
        return _no_match_topk(t, kk, queries.device)
    bm = block_m or min(128, max(32, next_pow2(4 * kk)))
    k_part = min(kk, bm)
    _, _, ps, pi, pb = _launch(
        queries, tokens, token_mask, k_part=k_part, write_scores=False, write_best=True,
        block_m=bm, block_t=block_t, block_d=block_d,
    )  # fmt: skip
    ps, pi, pb = ps.view(t, -1), pi.view(t, -1), pb.view(t, -1)
    pi = torch.where(pi < 0, torch.full_like(pi, _NO_MOLECULE), pi)
    return merge_topk(ps, pi, pb, kk)
