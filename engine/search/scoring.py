"""Exact scoring of stored molecule vectors, shared by every candidate strategy.

* a text: one (D,) vector against a molecule's (K, D) tokens, MaxSim (the max cosine over tokens);
* a molecule: its (Q, D) query tokens against the stored ones, token-set similarity (mean over
  the query tokens of their MaxSim, ColBERT's late interaction between two token sets);
* pooled: one (D,) vector per molecule, plain cosine.

Scores go through the `kernels.maxsim` dispatch (Triton on GPUs, torch otherwise). Stored vectors
are read from Arrow without per-row Python work (`tokens_from_arrow`, `pooled_from_arrow`).
"""

from __future__ import annotations

import warnings

import pyarrow as pa
import torch

from mvclam.kernels import maxsim

__all__ = [
    "exact_scores",
    "pooled_from_arrow",
    "rescore_candidates",
    "token_set_similarity",
    "tokens_from_arrow",
]


def tokens_from_arrow(column: pa.ChunkedArray | pa.Array) -> torch.Tensor:
    """list<fixed_size_list<T, D>> (fixed K per row) → (M, K, D) tensor without per-row Python work."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    rows = len(column)
    inner = column.flatten()
    dim = inner.type.list_size
    values = inner.flatten().to_numpy(zero_copy_only=False)
    if rows == 0:
        return torch.empty(0, 0, dim)
    with warnings.catch_warnings():  # Arrow buffers are read-only; the tokens are only ever read
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(values.reshape(rows, -1, dim))


def pooled_from_arrow(column: pa.ChunkedArray | pa.Array) -> torch.Tensor:
    """fixed_size_list<T, D> (one pooled vector per row) → (M, D) float32 tensor."""
    return torch.from_numpy(column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), -1)).float()


def token_set_similarity(query_tokens: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """(Q, D) query tokens against (M, K, D) stored tokens → (M,) mean over query tokens of MaxSim
    (ColBERT's late interaction between two token sets)."""
    return maxsim(query_tokens.to(tokens.dtype), tokens).mean(dim=0)


def exact_scores(query: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact scores of (M, K, D) tokens for a (D,) text vector (MaxSim) or (Q, D) query tokens
    (token-set similarity) → ((M,) scores, (M,) best token, -1 for token sets), on tokens' device."""
    if query.ndim == 1:
        scores, best = maxsim(query[None].to(tokens.dtype), tokens, return_argmax=True)
        return scores[0], best[0]
    best = torch.full((len(tokens),), -1, dtype=torch.long, device=tokens.device)
    return token_set_similarity(query, tokens), best


def rescore_candidates(
    query: torch.Tensor, tokens: torch.Tensor, limit: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`exact_scores` of candidate tokens and the indices of the top `limit` (ties in row order)."""
    scores, best = exact_scores(query, tokens)
    return scores, best, torch.sort(scores, descending=True, stable=True).indices[:limit]
