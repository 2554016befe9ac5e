"""MaxSim scoring of text vectors against molecule token sets (late interaction).

score[t, m] = max_{q : token_mask[m, q]} <queries[t], tokens[m, q]>

Inputs are already L2-normalised, so this is a max cosine. All arithmetic is float32 whatever the
input dtype. A molecule without any valid token scores ``-inf`` and has ``best_token == -1``.

The torch references here are the definition of correctness; the fused Triton kernels live in
``kernels/triton_maxsim.py`` and are imported lazily through :func:`kernels.dispatch.use_triton`.
"""

from __future__ import annotations

import torch

from ._checks import check_maxsim_inputs, merge_topk
from .dispatch import use_triton

__all__ = ["maxsim", "maxsim_reference", "maxsim_topk", "maxsim_topk_reference", "merge_topk"]

# Elements of the float32 (T, chunk, Q) similarity block the reference may hold at once (64 MiB).
_REF_BLOCK_ELEMS = 1 << 24


def _auto_chunk(t: int, q: int, d: int, chunk_size: int | None) -> int:
    """Molecules per step: bounds both the (T, chunk, Q) similarity block and the float32 copy of a
    float16/bfloat16 token chunk (chunk, Q, D); without the second bound one query (T = 1) would
    convert the whole table at once, which is several times slower than cache-sized chunks."""
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        return int(chunk_size)
    return max(1, _REF_BLOCK_ELEMS // max(1, t * q, q * d))


def _maxsim_chunk(
    qf: torch.Tensor, tokens: torch.Tensor, token_mask: torch.Tensor | None, want_argmax: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scores (T, c) / arg-max (T, c) of float32 queries ``qf`` (T, D) against one chunk of molecules.

    The similarity block is laid out (c, Q, T): the tall-skinny ``tokens @ queries^T`` product is
    the faster orientation for BLAS, and the reduction runs over the middle axis.
    """
    m, q, d = tokens.shape
    sim = (tokens.reshape(m * q, d).float() @ qf.T).view(m, q, qf.shape[0])
    if token_mask is not None:
        sim = sim.masked_fill(~token_mask.unsqueeze(2), float("-inf"))
    if not want_argmax:
        return sim.amax(dim=1).T, None
    scores, best = sim.max(dim=1)
    if token_mask is not None:
        best = best.masked_fill(~token_mask.any(dim=1).unsqueeze(1), -1)
    return scores.T, best.T


def maxsim_reference(
    queries: torch.Tensor,
    tokens: torch.Tensor,
    token_mask: torch.Tensor | None = None,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch reference MaxSim.

    Args:
        queries: (T, D) float tensor (L2-normalised text vectors).
        tokens: (M, Q, D) float tensor (L2-normalised molecule tokens).
        token_mask: (M, Q) bool, True = valid token; ``None`` means all valid.
        chunk_size: molecules scored per step; the float32 (T, chunk, Q) block is the only
            intermediate. ``None`` picks a chunk that keeps it at most ~64 MiB.

    Returns:
        scores (T, M) float32 (``-inf`` for a molecule with no valid token) and
        best_token (T, M) int64 (arg-max token index, ``-1`` for such molecules).
    """
    check_maxsim_inputs(queries, tokens, token_mask)
    t, m, q = queries.shape[0], tokens.shape[0], tokens.shape[1]
    if q == 0:
        return (
            torch.full((t, m), float("-inf"), device=queries.device),
            torch.full((t, m), -1, dtype=torch.int64, device=queries.device),
        )
    scores, best = _maxsim_chunked(queries, tokens, token_mask, chunk_size, want_argmax=True)
    assert best is not None
    return scores, best


def _maxsim_chunked(
    queries: torch.Tensor,
    tokens: torch.Tensor,
    token_mask: torch.Tensor | None,
    chunk_size: int | None,
    *,
    want_argmax: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    t, m, q = queries.shape[0], tokens.shape[0], tokens.shape[1]
    chunk = _auto_chunk(t, q, tokens.shape[2], chunk_size)
    qf = queries.float()
    scores = torch.empty((t, m), dtype=torch.float32, device=queries.device)
    best = torch.empty((t, m), dtype=torch.int64, device=queries.device) if want_argmax else None
    for s in range(0, m, chunk):
        e = min(m, s + chunk)
        sc, bt = _maxsim_chunk(qf, tokens[s:e], None if token_mask is None else token_mask[s:e], want_argmax)
        scores[:, s:e] = sc
        if best is not None:
            best[:, s:e] = bt
    return scores, best


def maxsim_topk_reference(
    queries: torch.Tensor,
    tokens: torch.Tensor,
    token_mask: torch.Tensor | None = None,
    *,
    k: int,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Torch reference top-k MaxSim with a running merge, so (T, M) scores are never held at once.

    Returns scores (T, k') float32, molecule_index (T, k') int64 and best_token (T, k') int64 with
    ``k' = min(k, M)``, sorted by score descending; ties go to the lower molecule index.
    """
    check_maxsim_inputs(queries, tokens, token_mask)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    t, m, q = queries.shape[0], tokens.shape[0], tokens.shape[1]
    kk = min(int(k), m)
    dev = queries.device
    top_s = torch.empty((t, 0), dtype=torch.float32, device=dev)
    top_i = torch.empty((t, 0), dtype=torch.int64, device=dev)
    top_b = torch.empty((t, 0), dtype=torch.int64, device=dev)
    if kk == 0:
        return top_s, top_i, top_b
    chunk = max(_auto_chunk(t, max(q, 1), tokens.shape[2], chunk_size), 1)
    for s in range(0, m, chunk):
        e = min(m, s + chunk)
        sc, bt = maxsim_reference(
            queries, tokens[s:e], None if token_mask is None else token_mask[s:e], chunk_size=e - s
        )
        idx = torch.arange(s, e, device=dev).expand(t, e - s)
        top_s, top_i, top_b = merge_topk(
            torch.cat([top_s, sc], 1), torch.cat([top_i, idx], 1), torch.cat([top_b, bt], 1), kk
        )
    return top_s, top_i, top_b


def maxsim(
    queries: torch.Tensor,
    tokens: torch.Tensor,
    token_mask: torch.Tensor | None = None,
    *,
    return_argmax: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """MaxSim scores of every text against every molecule (dispatches Triton or torch).

    Args:
        queries: (T, D) float32/float16/bfloat16, L2-normalised.
        tokens: (M, Q, D) same family of dtypes, L2-normalised.
        token_mask: (M, Q) bool, True = valid; ``None`` = all valid.
        return_argmax: also return the arg-max token per (text, molecule).

    Returns:
        scores (T, M) float32, or ``(scores, best_token)`` with best_token (T, M) int64
        (``-1`` and score ``-inf`` for molecules without a valid token).
    """
    check_maxsim_inputs(queries, tokens, token_mask)
    if use_triton(queries, tokens, token_mask):
        from .triton_maxsim import maxsim_triton

        scores, best = maxsim_triton(queries, tokens, token_mask, return_argmax=return_argmax)
    elif tokens.shape[1] == 0 or return_argmax:
        scores, best = maxsim_reference(queries, tokens, token_mask)
    else:  # same reference arithmetic, without the arg-max bookkeeping
        scores, best = _maxsim_chunked(queries, tokens, token_mask, None, want_argmax=False)
    return (scores, best) if return_argmax else scores


def maxsim_topk(
    queries: torch.Tensor,
    tokens: torch.Tensor,
    token_mask: torch.Tensor | None = None,
    *,
    k: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-``k`` molecules per text by MaxSim (dispatches Triton or torch).

    Returns ``(scores (T, k'), molecule_index (T, k') int64, best_token (T, k') int64)`` with
    ``k' = min(k, M)``, sorted by score descending (ties: lower molecule index first). The Triton
    path writes only per-block partial top-k lists, never the (T, M) score matrix.
    """
    check_maxsim_inputs(queries, tokens, token_mask)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if use_triton(queries, tokens, token_mask):
        from .triton_maxsim import maxsim_topk_triton

        return maxsim_topk_triton(queries, tokens, token_mask, k=k)
    return maxsim_topk_reference(queries, tokens, token_mask, k=k)
