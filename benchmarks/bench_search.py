"""Search latency and recall: exact MaxSim (brute force) against the LanceDB index path.

    python benchmarks/bench_search.py --seed-db moses_db --rows 100000 1000000 \
        --index-types IVF_SQ --nprobes 10 20 40

Not a test: run it by hand on a quiet machine; docs/benchmarks.md quotes its JSON output.

The seed table holds real molecules embedded by `mvclam embed` (e.g. 10k MOSES molecules). A
larger table is a *realistic synthetic* token set: each synthetic molecule takes the 2D-view
tokens of one real molecule and the 3D-view tokens of another, plus Gaussian noise on every token
(re-normalised), so each token is a real token of the model's space and molecules are not
near-copies of a few parents. Queries are real sentences embedded by the same model.

Measured side by side in one run, on the same table and queries:
* exact: `kernels.maxsim_topk` over all tokens held in memory (when they fit: `--max-in-memory-gb`);
* exact-scan: the searcher's exact path (streams the token column from Lance per query); its
  results are the truth for recall;
* index: for each index type, IVF partitions probed and refine factor, the searcher's index path
  (ANN candidates, then exact MaxSim re-score of the candidates); recall@10 against exact MaxSim,
  p50/p95 latency, queries/s, index build time and on-disk sizes.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
import torch
from search_queries import QUERIES

from mvclam.engine.search import CatalogSearcher, build_index
from mvclam.engine.search.index import token_index
from mvclam.engine.search.scoring import tokens_from_arrow
from mvclam.engine.search.searcher import SearchHit
from mvclam.engine.store.schema import multivector_array, vector_array
from mvclam.kernels import maxsim_topk
from mvclam.kernels.maxsim import merge_topk


def directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def synthetic_batches(
    seed: pa.Table, rows: int, noise: float, rng: np.random.Generator, chunk: int = 10_000
) -> Iterator[pa.RecordBatch]:
    """`rows` synthetic molecules from the seed's real tokens (float16, like a production table).

    Rows up to the seed's size are the real molecules themselves; beyond it, each row joins the
    first-view tokens of one seed molecule with the second-view tokens of another, plus noise."""
    tokens = tokens_from_arrow(seed["tokens"]).float().numpy()
    half = tokens.shape[1] // 2
    for start in range(0, rows, chunk):
        size = min(chunk, rows - start)
        if start + size <= len(tokens):
            first = second = np.arange(start, start + size)
            batch_tokens = tokens[first].copy()
        else:
            first = rng.integers(0, len(tokens), size=size)
            second = rng.integers(0, len(tokens), size=size)
            batch_tokens = np.concatenate([tokens[first, :half], tokens[second, half:]], axis=1)
            batch_tokens += noise * rng.standard_normal(batch_tokens.shape, dtype=np.float32)
            batch_tokens /= np.linalg.norm(batch_tokens, axis=-1, keepdims=True)
        pooled = batch_tokens.mean(axis=1)
        pooled /= np.linalg.norm(pooled, axis=-1, keepdims=True)
        props = seed.take(pa.array(first))
        yield pa.RecordBatch.from_pydict(
            {
                "id": pa.array([f"S{start + i:08d}" for i in range(size)]),
                "canonical_smiles": props["canonical_smiles"].combine_chunks(),
                "inchikey": props["inchikey"].combine_chunks(),
                "tokens": multivector_array(batch_tokens.astype(np.float16)),
                "pooled": vector_array(pooled.astype(np.float16)),
                "mw": props["mw"].combine_chunks(),
                "hbd": props["hbd"].combine_chunks(),
                "model_version": props["model_version"].combine_chunks(),
            }
        )


def latencies(
    call, queries: list[str], passes: int = 1, warmup_passes: int = 0
) -> tuple[dict[str, float], dict[str, object]]:
    """Timing of `call` per query over `passes` passes through `queries`, and its results by query
    (of the last pass). Warm-up: one call, or `warmup_passes` whole untimed passes — a running
    service's steady state, when table and index do not fit in the page cache."""
    for query in queries[:1] if warmup_passes == 0 else queries * warmup_passes:
        call(query)  # caches, lazy imports; with whole passes, the page cache too
    times, results = [], {}
    for query in queries * passes:
        started = time.perf_counter()
        results[query] = call(query)
        times.append(time.perf_counter() - started)
    times_ms = sorted(1000 * t for t in times)
    stats = {
        "p50_ms": statistics.median(times_ms),
        "p95_ms": times_ms[min(len(times_ms) - 1, int(0.95 * len(times_ms)))],
        "queries_per_s": len(times) / sum(times),
    }
    return stats, results


def exact_truth(searcher: CatalogSearcher, queries: list[str], k: int) -> dict[str, list[SearchHit]]:
    """Exact top-k MaxSim of every query in one streamed pass over the token column."""
    vectors = torch.stack([searcher.embed_query(q) for q in queries])
    top = (torch.empty(len(queries), 0), torch.empty(len(queries), 0, dtype=torch.long))
    ids: list[str] = []
    scanner = searcher.table.to_lance().scanner(columns=["id", "tokens"], batch_size=8192)
    for batch in scanner.to_batches():
        tokens = tokens_from_arrow(batch.column("tokens"))
        scores, index, _ = maxsim_topk(vectors.to(tokens.dtype), tokens, k=min(k, batch.num_rows))
        scores, index = torch.cat([top[0], scores.float()], 1), torch.cat([top[1], index + len(ids)], 1)
        top = merge_topk(scores, index, torch.zeros_like(index), k)[:2]
        ids.extend(batch.column("id").to_pylist())
    return {
        query: [
            SearchHit(id=ids[i], score=float(s), best_token=-1)
            for i, s in zip(top[1][q].tolist(), top[0][q].tolist(), strict=True)
        ]
        for q, query in enumerate(queries)
    }


def recall(
    found: dict[str, list[str]], truth: dict[str, list[str]], k: int, queries: list[str] | None = None
) -> float:
    return float(np.mean([len(set(found[q]) & set(truth[q])) / k for q in queries or truth]))


def kth_score_gap(found: dict[str, list], truth: dict[str, list], k: int) -> float:
    """Mean over queries of (exact k-th best score − k-th score returned): how far below the
    true top-k the misses are (0 when the top-k is exact)."""
    return float(np.mean([truth[q][k - 1].score - found[q][min(k, len(found[q])) - 1].score for q in truth]))


def measure(rows: int, seed: pa.Table, model, queries: list[str], args: argparse.Namespace, rng) -> dict:
    workdir = Path(args.workdir) / f"rows_{rows}"
    db = lancedb.connect(str(workdir))
    if args.reuse_table and "molecules" in db.list_tables().tables:
        # A 1M-row table takes ~7 min to write and its index over an hour to build on 2 cores:
        # measure again on the one a previous run left (same rows, same seed and noise).
        table = db.open_table("molecules")
        assert table.count_rows() == rows, f"{workdir} holds {table.count_rows()} rows, not {rows}"
        entry: dict = {"rows": rows, "reused_table": str(workdir)}
        first = table.to_lance().to_table(columns=["tokens"], limit=1000)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
        db = lancedb.connect(str(workdir))
        started = time.perf_counter()
        batches = synthetic_batches(seed, rows, args.noise, rng)
        first = next(batches)
        table = db.create_table(
            "molecules", pa.RecordBatchReader.from_batches(first.schema, itertools.chain([first], batches))
        )
        write_s = time.perf_counter() - started
        entry = {"rows": rows, "write_s": write_s}
        print(f"{rows} rows written in {write_s:.0f} s", flush=True)
    data_bytes = directory_bytes(Path(workdir, "molecules.lance", "data"))
    entry["table_bytes"] = data_bytes
    entry["table_bytes_per_million_rows"] = data_bytes * 1e6 / rows

    def searcher(**options) -> CatalogSearcher:  # a fresh handle sees the latest index
        return CatalogSearcher(workdir, "molecules", model=model, **options)

    exact = searcher()
    entry["query_embedding_ms_p50"] = latencies(exact.embed_query, queries)[0]["p50_ms"]
    truth_hits = exact_truth(exact, queries, args.k)
    truth = {q: [h.id for h in hits] for q, hits in truth_hits.items()}
    # The searcher's own exact path, timed on the first queries (each one reads every token).
    timed = queries[: args.exact_scan_queries]
    if timed:
        entry["exact_scan"], scanned = latencies(lambda q: exact.search_text(q, k=args.k, exact=True), timed)
        entry["exact_scan"]["queries"] = len(timed)
        entry["exact_scan"]["recall_at_10"] = recall(
            {q: [h.id for h in scanned[q]] for q in timed}, truth, args.k, timed
        )
        print("exact scan", entry["exact_scan"], flush=True)

    in_memory_gb = rows * first.column("tokens").nbytes / len(first) * 2 / 1e9  # float32 copy
    if in_memory_gb <= args.max_in_memory_gb:
        tokens = tokens_from_arrow(table.to_lance().to_table(columns=["tokens"])["tokens"])
        ids = table.to_lance().to_table(columns=["id"])["id"].to_pylist()
        for dtype in (torch.float16, torch.float32):
            held = tokens.to(dtype)

            def exact_ids(query: str, held=held) -> list[str]:
                vector = exact.embed_query(query).to(held.dtype)
                _, index, _ = maxsim_topk(vector[None], held, k=args.k)
                return [ids[i] for i in index[0].tolist()]

            name = f"exact_in_memory_{str(dtype).removeprefix('torch.')}"
            stats, found = latencies(exact_ids, queries)
            entry[name] = {**stats, "recall_at_10": recall(found, truth, args.k)}
            print(name, entry[name], flush=True)
            del held
        del tokens
    else:
        entry["exact_in_memory"] = f"skipped: a float32 copy needs {in_memory_gb:.0f} GB"

    for index_type in args.index_types:
        existing = token_index(table)
        if (
            args.reuse_table
            and existing is not None
            and table.index_stats(existing.name).index_type == index_type
        ):
            result: dict = {"index": {"reused": existing.name, "size_bytes": existing.size_bytes}}
            size_bytes = existing.size_bytes or 0
        else:
            started = time.perf_counter()
            report = build_index(table, index_type=index_type, num_partitions=args.num_partitions)
            result = {"build_s": time.perf_counter() - started, "index": report.to_dict()}
            size_bytes = report.size_bytes or 0
            print(f"{index_type} built in {result['build_s']:.0f} s", flush=True)
        result["index_bytes_per_million_rows"] = size_bytes * 1e6 / rows
        settings = [
            (n, r, c) for n in args.nprobes for r in args.refine_factors for c in args.candidate_factors
        ]
        for nprobes, refine, candidates in settings:
            indexed = searcher(nprobes=nprobes, refine_factor=refine, candidate_factor=candidates)
            assert indexed.has_index()
            stats, hits = latencies(
                lambda q, s=indexed: s.search_text(q, k=args.k), queries, args.passes, args.warmup_passes
            )
            found = {q: [h.id for h in found_hits] for q, found_hits in hits.items()}
            name = f"nprobes{nprobes}_refine{refine}_candidates{candidates}"
            result[name] = {
                **stats,
                "recall_at_10": recall(found, truth, args.k),
                "kth_score_gap": kth_score_gap(hits, truth_hits, args.k),
                "min_results": min(len(v) for v in found.values()),
            }
            print(index_type, name, result[name], flush=True)
        entry[index_type] = result
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed-db", required=True, help="a LanceDB directory written by `mvclam embed`")
    parser.add_argument("--seed-table", default="molecules")
    parser.add_argument("--model", default=None, help="the checkpoint that embedded the seed table")
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000])
    parser.add_argument("--index-types", nargs="*", default=["IVF_SQ"])
    parser.add_argument("--num-partitions", type=int, default=None, help="default: build_index's rule")
    parser.add_argument("--nprobes", type=int, nargs="+", default=[10, 20, 40])
    parser.add_argument("--refine-factors", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--candidate-factors", type=int, nargs="+", default=[4], help="ANN rows per result, re-scored"
    )
    parser.add_argument("--max-in-memory-gb", type=float, default=6.0)
    parser.add_argument(
        "--exact-scan-queries", type=int, default=16, help="queries timed on the exact path (0: none)"
    )
    parser.add_argument("--noise", type=float, default=0.02)
    parser.add_argument("--workdir", default="runs/bench_search")
    parser.add_argument(
        "--reuse-table",
        action="store_true",
        help="measure on the table (and index, when of the type asked) a previous run left in --workdir",
    )
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--passes", type=int, default=1, help="timed passes over the queries (index path)")
    parser.add_argument(
        "--warmup-passes", type=int, default=0, help="untimed passes first (0: one warm-up query)"
    )
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)

    seed_searcher = CatalogSearcher(args.seed_db, args.seed_table, checkpoint=args.model)
    seed = seed_searcher.table.to_lance().to_table(
        columns=["canonical_smiles", "inchikey", "tokens", "mw", "hbd", "model_version"]
    )
    model = seed_searcher.model
    queries = QUERIES
    report: dict = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, no GPU",
        "seed_rows": seed.num_rows,
        "noise": args.noise,
        "queries": len(queries),
        "index_path_passes": args.passes,
        "index_path_warmup_passes": args.warmup_passes,
        "k": args.k,
        "results": [],
    }
    rng = np.random.default_rng(0)
    for rows in args.rows:
        entry = measure(rows, seed, model, queries, args, rng)
        report["results"].append(entry)
        print(json.dumps(entry, indent=2), flush=True)
    print(json.dumps(report, indent=2))
    Path(args.workdir, "report.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
