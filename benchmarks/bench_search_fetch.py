"""Index-path latency: result columns read by the ANN query itself vs a second lookup by id.

    python benchmarks/bench_search_fetch.py --db runs/bench_search/rows_1000000 --nprobes 5 10

Not a test: run it by hand on a quiet machine, on a table that already has its token index (e.g.
one left by bench_search.py). The previous searcher read the k results' stored columns with a
second query (`id IN (...)`); the current one selects them in the ANN query. Both run on the same
queries; each setting is timed in both orders, because the first pass warms the page cache for the
second (at 1M molecules the table and index exceed this VM's memory).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from bench_search import QUERIES, exact_truth, latencies, recall

from mvclam.engine.search import CatalogSearcher


class IdLookupSearcher(CatalogSearcher):
    """The searcher before the change: the index path fetched the results' columns by id."""

    def _index_candidates(self, query, limit, where):
        ids, scores, best, _ = super()._index_candidates(query, limit, where)
        return ids, scores, best, self._fetch(ids, self.result_columns)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True, help="LanceDB directory with an indexed `molecules` table")
    parser.add_argument("--table", default="molecules")
    parser.add_argument("--nprobes", type=int, nargs="+", default=[5, 10])
    parser.add_argument("--candidate-factors", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)

    exact = CatalogSearcher(args.db, args.table)
    assert exact.has_index(), "build the token index first (mvclam index or bench_search.py)"
    started = time.perf_counter()
    truth = {q: [h.id for h in hits] for q, hits in exact_truth(exact, QUERIES, 10).items()}
    report: dict = {"rows": exact.table.count_rows(), "truth_pass_s": time.perf_counter() - started}
    for order in ("id_lookup_first", "ann_columns_first"):
        classes = (IdLookupSearcher, CatalogSearcher)
        for nprobes in args.nprobes:
            for factor in args.candidate_factors:
                for cls in classes if order == "id_lookup_first" else classes[::-1]:
                    searcher = cls(
                        args.db, args.table, model=exact.model, nprobes=nprobes, candidate_factor=factor
                    )
                    stats, hits = latencies(lambda q, s=searcher: s.search_text(q, k=10), QUERIES)
                    found = {q: [h.id for h in found_hits] for q, found_hits in hits.items()}
                    name = f"{order}/{cls.__name__}/nprobes{nprobes}_candidates{factor}"
                    report[name] = {**stats, "recall_at_10": recall(found, truth, 10)}
                    print(name, {k: round(v, 3) for k, v in report[name].items()}, flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
