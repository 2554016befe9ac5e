"""Index-path latency: candidates' columns read inside the ANN query vs one take by row id after it.

    python benchmarks/bench_search_fetch.py --db runs/bench_search/rows_1000000 --nprobes 5 10

Not a test: run it by hand on a quiet machine, on a table that already has its token index (e.g.
one left by bench_search.py). The previous searcher (session 6) selected the candidates' tokens and
result columns in the ANN query itself; the current one asks the ANN query for row ids only and
reads tokens and columns of all candidates in one `take_row_ids`. Both run on the same text
queries, and on `--molecule-queries` stored molecules searched by SMILES (one ANN query per query
token, so the columns read per ANN query add up; results must be identical); each setting is timed
in both orders, because the first pass warms the page cache for the second (at 1M
molecules the table and index exceed this VM's memory).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from bench_search import exact_truth, latencies, recall
from search_queries import QUERIES

from mvclam.engine.search import CatalogSearcher
from mvclam.engine.search.index import TOKEN_COLUMN
from mvclam.engine.search.scoring import rescore_candidates, tokens_from_arrow


class AnnColumnsSearcher(CatalogSearcher):
    """The searcher before the change: the ANN query itself selected tokens and result columns."""

    def _index_candidates(self, query, limit, where):
        candidates, columns = {}, {}
        for vector in query if query.ndim == 2 else query[None]:
            found = self._ann_columns(vector, limit * self.candidate_factor, where, adaptive=False)
            if found.num_rows < limit * self.candidate_factor:
                found = self._ann_columns(vector, limit * self.candidate_factor, where, adaptive=True)
            rows = found.select(self.result_columns).to_pylist()
            for row, tokens in zip(rows, tokens_from_arrow(found[TOKEN_COLUMN]), strict=True):
                candidates.setdefault(row["id"], tokens)
                columns.setdefault(row["id"], row)
        ids = list(candidates)
        scores, best, order = rescore_candidates(query, torch.stack(list(candidates.values())), limit)
        top_ids = [ids[i] for i in order.tolist()]
        return top_ids, scores[order], best[order], {i: columns[i] for i in top_ids}

    def _ann_columns(self, vector, limit, where, adaptive):
        builder = (
            self.table.search(vector.numpy(), vector_column_name=TOKEN_COLUMN)
            .distance_type("cosine")
            .where(self._where(where), prefilter=True)
            .limit(limit)
            .select([*self.result_columns, TOKEN_COLUMN, "_distance"])
        )
        if adaptive:
            return builder.minimum_nprobes(self.nprobes).maximum_nprobes(0).to_arrow()
        return builder.nprobes(self.nprobes).to_arrow()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True, help="LanceDB directory with an indexed `molecules` table")
    parser.add_argument("--table", default="molecules")
    parser.add_argument("--nprobes", type=int, nargs="+", default=[5, 10])
    parser.add_argument("--candidate-factors", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--out", default=None)
    parser.add_argument(
        "--molecule-queries", type=int, default=12, help="stored molecules searched by SMILES"
    )
    parser.add_argument(
        "--truth", default=None, help="exact top-10 ids per query: read if present, else written"
    )
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)

    exact = CatalogSearcher(args.db, args.table)
    assert exact.has_index(), "build the token index first (mvclam index or bench_search.py)"
    started = time.perf_counter()
    if args.truth and Path(args.truth).exists():
        truth = json.loads(Path(args.truth).read_text())
    else:  # one streamed pass over the table (~100 s at 1M molecules here)
        truth = {q: [h.id for h in hits] for q, hits in exact_truth(exact, QUERIES, 10).items()}
        if args.truth:
            Path(args.truth).write_text(json.dumps(truth))
    report: dict = {"rows": exact.table.count_rows(), "truth_pass_s": time.perf_counter() - started}
    for order in ("ann_columns_first", "row_id_take_first"):
        classes = (AnnColumnsSearcher, CatalogSearcher)
        for nprobes in args.nprobes:
            for factor in args.candidate_factors:
                for cls in classes if order == "ann_columns_first" else classes[::-1]:
                    searcher = cls(
                        args.db, args.table, model=exact.model, nprobes=nprobes, candidate_factor=factor
                    )
                    stats, hits = latencies(lambda q, s=searcher: s.search_text(q, k=10), QUERIES)
                    found = {q: [h.id for h in found_hits] for q, found_hits in hits.items()}
                    name = f"{order}/{cls.__name__}/nprobes{nprobes}_candidates{factor}"
                    report[name] = {**stats, "recall_at_10": recall(found, truth, 10)}
                    print(name, {k: round(v, 3) for k, v in report[name].items()}, flush=True)
    # Molecule -> molecules: one ANN query per query token (32), so what each reads adds up.
    smiles = exact.table.to_lance().to_table(columns=["canonical_smiles"], limit=args.molecule_queries)
    smiles = smiles["canonical_smiles"].to_pylist()
    results = {}
    for order in ("ann_columns_first", "row_id_take_first") if smiles else ():
        classes = (AnnColumnsSearcher, CatalogSearcher)
        for cls in classes if order == "ann_columns_first" else classes[::-1]:
            searcher = cls(args.db, args.table, model=exact.model, nprobes=args.nprobes[0])
            stats, hits = latencies(lambda q, s=searcher: s.search_molecule(q, k=10), smiles)
            results.setdefault(cls.__name__, {q: [h.id for h in found] for q, found in hits.items()})
            name = f"molecule_queries/{order}/{cls.__name__}/nprobes{args.nprobes[0]}"
            report[name] = stats
            print(name, {k: round(v, 3) for k, v in stats.items()}, flush=True)
    if smiles:
        report["molecule_queries_identical_results"] = len(set(map(str, results.values()))) == 1
        print("molecule queries: identical results", report["molecule_queries_identical_results"])
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
