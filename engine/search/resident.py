"""Exact MaxSim over a table's token vectors held in one device tensor (GPU memory, typically).

Without an index, exact search streams the whole token column from Lance for every query (48.8 s
per query at 1M molecules on 2 CPU cores). A long-lived searcher with a GPU can instead hold the
tokens in device memory (16 GB at 1M molecules x 32 tokens x 256 in float16) and score all of
them per query with the fused MaxSim kernel: 4.0 ms for the top 10 of 1M through `top` on an
H200 (docs/benchmarks.md), exact, with no index to build or tune.

The copy is tied to the table version it was read from; the searcher reloads it when the table
moves on (rows embedded or deleted, compaction) and reads result columns by the stored row ids
(`candidates.ResidentCandidates`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import torch

from mvclam.engine.search.index import TOKEN_COLUMN
from mvclam.engine.search.scoring import exact_scores, tokens_from_arrow
from mvclam.kernels import maxsim_topk

if TYPE_CHECKING:
    import lancedb


@dataclass
class ResidentTokens:
    """(M, K, D) token vectors on a device and their Lance row ids, read at table version `version`."""

    version: int
    row_ids: np.ndarray  # (M,) uint64, in the order of `tokens`
    tokens: torch.Tensor  # (M, K, D), the stored dtype (float16 or float32)

    def __post_init__(self) -> None:
        self._sorted = np.argsort(self.row_ids, kind="stable")  # row id -> position lookups

    @classmethod
    def load(
        cls,
        table: lancedb.table.Table,
        row_filter: str,
        device: str | torch.device,
        batch_size: int = 8192,
    ) -> ResidentTokens:
        """Copies the token column of the rows matching `row_filter` to `device`, one Arrow batch at
        a time (host memory holds one batch, not the table). Raises torch.OutOfMemoryError when
        the tokens do not fit on the device."""
        dataset = table.to_lance()  # one version for the count and the scan
        rows = dataset.count_rows(filter=row_filter)
        scanner = dataset.scanner(
            columns=[TOKEN_COLUMN], with_row_id=True, filter=row_filter, batch_size=batch_size
        )
        row_ids = np.empty(rows, dtype=np.uint64)
        tokens: torch.Tensor | None = None
        filled = 0
        for batch in scanner.to_batches():
            if batch.num_rows == 0:
                continue
            part = tokens_from_arrow(batch.column(TOKEN_COLUMN))
            if tokens is None:
                tokens = torch.empty((rows, *part.shape[1:]), dtype=part.dtype, device=device)
            tokens[filled : filled + len(part)] = part.to(device)
            row_ids[filled : filled + len(part)] = batch.column("_rowid").to_numpy()
            filled += len(part)
        if tokens is None:
            tokens = torch.empty((0, 0, 0), dtype=torch.float32, device=device)
        # One dataset version for count and scan, so `filled == rows`; slicing keeps a short scan
        # from ever exposing the unwritten tail of the allocation.
        return cls(version=dataset.version, row_ids=row_ids[:filled], tokens=tokens[:filled])

    @property
    def nbytes(self) -> int:
        return self.tokens.numel() * self.tokens.element_size()

    def mask(self, row_ids: pa.Array | np.ndarray) -> torch.Tensor:
        """(M,) bool on the device: True for the rows among `row_ids` (e.g. a filter's matches)."""
        allowed = np.zeros(len(self.row_ids), dtype=bool)
        wanted = np.asarray(row_ids, dtype=np.uint64)
        if len(self.row_ids) and len(wanted):
            sorted_ids = self.row_ids[self._sorted]
            at = np.searchsorted(sorted_ids, wanted).clip(max=len(sorted_ids) - 1)
            allowed[self._sorted[at[sorted_ids[at] == wanted]]] = True
        return torch.from_numpy(allowed).to(self.tokens.device)

    def top(
        self, query: torch.Tensor, limit: int, allowed: torch.Tensor | None = None
    ) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        """The best `limit` rows for a (D,) text vector (MaxSim) or (Q, D) query tokens (mean over
        query tokens of MaxSim, as `token_set_similarity`) → (row ids, scores, best token or -1),
        best first, on the CPU. Only rows where `allowed` is True compete."""
        if len(self.row_ids) == 0:
            return self.row_ids[:0], torch.empty(0), torch.empty(0, dtype=torch.long)
        query = query.to(self.tokens.device, self.tokens.dtype)
        if query.ndim == 1 and allowed is None:
            # The fused top-k: never materialises the (1, M) scores.
            scores, index, best = (x[0] for x in maxsim_topk(query[None], self.tokens, k=limit))
        else:
            all_scores, all_best = exact_scores(query, self.tokens)
            candidates = len(all_scores)
            if allowed is not None:
                all_scores = all_scores.masked_fill(~allowed, float("-inf"))
                candidates = int(allowed.sum())
            scores, index = all_scores.topk(min(limit, candidates))
            # Equal scores (duplicate molecules) in row order, like the streaming exact path.
            order = np.lexsort((index.cpu().numpy(), -scores.cpu().numpy()))
            index = index[torch.from_numpy(order).to(index.device)]
            scores, best = all_scores[index], all_best[index]
        index = index.cpu()
        return self.row_ids[index.numpy()], scores.float().cpu(), best.cpu()
