"""Cross-modal retrieval metrics on a (texts x molecules) score matrix.

Conventions (the evaluation report repeats them):

* Queries. Text→molecule: every pair row (text) is one query over the distinct molecules
  (InChIKeys) of the set. Molecule→text: every distinct molecule is one query over all texts.
* Duplicates. A molecule with several descriptions is one candidate in text→molecule; in
  molecule→text it is a hit when ANY of its descriptions ranks high: its rank is 1 + the number of
  other molecules' texts scoring above its best-scoring own text (its own other texts never count
  as mistakes).
* Ties are counted against the query (pessimistic): a wrong candidate scoring exactly as the true
  one ranks above it, so a constant scorer gets the worst rank, not the best.
* In-batch (MolCA): rows are shuffled with a fixed seed and cut into batches of 64 rows; each batch
  is a retrieval set of its own (its texts and its distinct molecules) and metrics are averaged over
  all queries of all batches (micro-average, as MolCA sums correct counts over batches).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

# (query rows, candidate columns) -> probability per pair; used to re-rank a query's top candidates.
PairScorer = Callable[[np.ndarray, np.ndarray], np.ndarray]
RERANK_OFFSET = 1e6  # re-ranked candidates are lifted above every raw cosine score (|s| <= 1)


def text_to_molecule_ranks(scores: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """1-based rank of the true molecule for each text. scores (T, M), truth (T,) molecule index."""
    scores = np.asarray(scores, dtype=np.float64)
    true = scores[np.arange(len(truth)), truth][:, None]
    return (scores >= true).sum(axis=1)  # counts the true molecule itself: ties count against it


def molecule_to_text_ranks(scores: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """1-based rank of the best own text for each molecule. scores (T, M) as above (not transposed),
    truth (T,) molecule index of each text; every molecule must own at least one text."""
    scores = np.asarray(scores, dtype=np.float64)
    n_texts, n_molecules = scores.shape
    own = np.zeros((n_texts, n_molecules), dtype=bool)
    own[np.arange(n_texts), truth] = True
    if not own.any(axis=0).all():
        raise ValueError("every molecule needs at least one text")
    best_own = np.where(own, scores, -np.inf).max(axis=0)  # (M,)
    return 1 + ((scores >= best_own[None, :]) & ~own).sum(axis=0)


def summarize_ranks(ranks: np.ndarray, ks: Sequence[int] = (1, 10, 20)) -> dict[str, float]:
    ranks = np.asarray(ranks, dtype=np.float64)
    out = {"mrr": float(np.mean(1.0 / ranks)) if len(ranks) else float("nan")}
    for k in ks:
        out[f"hits@{k}"] = float(np.mean(ranks <= k)) if len(ranks) else float("nan")
    out["mean_rank"] = float(np.mean(ranks)) if len(ranks) else float("nan")
    out["queries"] = len(ranks)
    return out


def in_batch_indices(n_rows: int, batch_size: int = 64, seed: int = 0) -> list[np.ndarray]:
    """Deterministic shuffled batches of row indices (the last one may be smaller)."""
    order = np.random.default_rng(seed).permutation(n_rows)
    return [order[start : start + batch_size] for start in range(0, n_rows, batch_size)]


@dataclass
class BatchView:
    """A sub-problem: its rows (texts), its distinct molecules and the local truth."""

    rows: np.ndarray  # (t,) global text indices
    molecules: np.ndarray  # (m,) global molecule indices, distinct
    truth: np.ndarray  # (t,) local molecule index of each row


def batch_view(rows: np.ndarray, truth: np.ndarray) -> BatchView:
    molecules, local = np.unique(truth[rows], return_inverse=True)
    return BatchView(rows=rows, molecules=molecules, truth=local)


def rerank_top(scores: np.ndarray, k: int, pair_probability: PairScorer) -> np.ndarray:
    """Scores with each row's top-k candidates replaced by RERANK_OFFSET + probability, so they are
    re-ordered by the matching head and stay above all other candidates (whose order is kept).
    `pair_probability(row_idx, col_idx)` gets flat arrays of the (row, column) pairs to score."""
    scores = np.asarray(scores, dtype=np.float64).copy()
    k = min(k, scores.shape[1])
    if k <= 0 or scores.size == 0:
        return scores
    # Stable order by (score desc, column asc): the same candidates as the MaxSim top-k kernel.
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    rows = np.repeat(np.arange(scores.shape[0]), k)
    cols = top.reshape(-1)
    probability = np.asarray(pair_probability(rows, cols), dtype=np.float64)
    scores[rows, cols] = RERANK_OFFSET + probability
    return scores


def retrieval_metrics(
    scores: np.ndarray,
    truth: np.ndarray,
    batch_size: int = 64,
    seed: int = 0,
    rerank_k: int = 0,
    match_probability: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
) -> dict[str, dict[str, float]]:
    """All metrics of one scorer. scores (T, M) text x molecule, truth (T,) molecule index.

    `match_probability(text_idx, molecule_idx)` (flat global indices) enables re-ranking of the top
    `rerank_k` candidates per query; results then also carry "<direction>_reranked" entries.
    """
    truth = np.asarray(truth, dtype=np.int64)
    out: dict[str, dict[str, float]] = {}
    variants: list[tuple[str, bool]] = [("", False)]
    if rerank_k > 0 and match_probability is not None:
        variants.append(("_reranked", True))
    for suffix, rerank in variants:
        full_t2m, full_m2t = _directional_ranks(scores, truth, rerank_k if rerank else 0, match_probability)
        batch_t2m, batch_m2t = [], []
        for rows in in_batch_indices(len(truth), batch_size, seed):
            view = batch_view(rows, truth)
            sub = scores[np.ix_(view.rows, view.molecules)]
            local = None
            if rerank:

                def local(r, c, view=view):  # map local (row, molecule) back to global indices
                    return match_probability(view.rows[r], view.molecules[c])

            t2m, m2t = _directional_ranks(sub, view.truth, rerank_k if rerank else 0, local)
            batch_t2m.append(t2m)
            batch_m2t.append(m2t)
        out[f"text_to_molecule{suffix}"] = _entry(full_t2m, np.concatenate(batch_t2m))
        out[f"molecule_to_text{suffix}"] = _entry(full_m2t, np.concatenate(batch_m2t))
    return out


def _directional_ranks(
    scores: np.ndarray,
    truth: np.ndarray,
    rerank_k: int,
    match_probability: Callable[[np.ndarray, np.ndarray], np.ndarray] | None,
) -> tuple[np.ndarray, np.ndarray]:
    t2m_scores, m2t_scores = scores, scores
    if rerank_k > 0 and match_probability is not None:
        t2m_scores = rerank_top(scores, rerank_k, match_probability)
        # Molecule queries: rows are molecules, columns texts; the scorer still wants (text, molecule).
        m2t_scores = rerank_top(scores.T, rerank_k, lambda m, t: match_probability(t, m)).T
    return text_to_molecule_ranks(t2m_scores, truth), molecule_to_text_ranks(m2t_scores, truth)


def _entry(full: np.ndarray, in_batch: np.ndarray) -> dict[str, float]:
    f = summarize_ranks(full, (1, 10, 20))
    b = summarize_ranks(in_batch, (1, 20))
    return {
        # Text2Mol protocol (full set)
        "mrr": f["mrr"],
        "hits@1": f["hits@1"],
        "hits@10": f["hits@10"],
        # MolCA protocol: accuracy (= top-1) and Recall@20, full set and in-batch
        "accuracy": f["hits@1"],
        "recall@20": f["hits@20"],
        "mean_rank": f["mean_rank"],
        "in_batch_accuracy": b["hits@1"],
        "in_batch_recall@20": b["hits@20"],
        "in_batch_mrr": b["mrr"],
        "queries": f["queries"],
    }


# ----------------------------------------------------------------------------- random baseline
def expected_random_metrics(
    n_candidates: np.ndarray, n_positive: np.ndarray, ks: Sequence[int] = (1, 10, 20)
) -> dict[str, float]:
    """Exact expectation, over uniformly random rankings, of MRR and Hits@k averaged over queries;
    query i ranks n_candidates[i] items of which n_positive[i] are correct (rank = best positive)."""
    n_candidates = np.asarray(n_candidates, dtype=np.int64)
    n_positive = np.asarray(n_positive, dtype=np.int64)
    mrr, hits = [], {k: [] for k in ks}
    cache: dict[tuple[int, int], tuple[float, dict[int, float]]] = {}
    for n, p in zip(n_candidates.tolist(), n_positive.tolist(), strict=True):
        if (n, p) not in cache:
            cache[(n, p)] = _random_query(n, p, ks)
        value, per_k = cache[(n, p)]
        mrr.append(value)
        for k in ks:
            hits[k].append(per_k[k])
    out = {"mrr": float(np.mean(mrr))}
    out.update({f"hits@{k}": float(np.mean(hits[k])) for k in ks})
    return out


def _random_query(n: int, p: int, ks: Sequence[int]) -> tuple[float, dict[int, float]]:
    """P(best positive at rank > r) = prod_{i<r} (n-p-i)/(n-i): the first r draws are all negatives."""
    r = np.arange(0, n - p + 1)
    factors = (n - p - r[:-1]) / (n - r[:-1])  # draw i (0-based) is negative given the previous were
    survival = np.concatenate([[1.0], np.cumprod(factors)])  # survival[r] = P(rank > r)
    prob_rank = survival[:-1] - survival[1:]  # P(rank = r + 1), r = 0 .. n-p-1
    prob_rank = np.append(prob_rank, survival[-1])  # rank n-p+1 (all negatives first)
    ranks = np.arange(1, n - p + 2)
    mrr = float(np.sum(prob_rank / ranks))
    per_k = {k: 1.0 if k > n - p else float(1.0 - survival[k]) for k in ks}
    return mrr, per_k
