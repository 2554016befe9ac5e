"""Search latency and recall: exact MaxSim (brute force) against the LanceDB index path.

    python benchmarks/bench_search.py --seed-db catalog_db --seed-table molecules --rows 100000

Not a test: run it by hand on a quiet machine; docs/benchmarks.md quotes its JSON output.

The table is a *realistic synthetic* token set: every synthetic molecule is a real embedded
molecule of the seed table (tokens written by `mvclam embed`) with Gaussian noise added to each
token and re-normalised, so the token geometry (near-duplicate tokens inside a molecule, clusters
of similar molecules) is the model's, at a scale this 2-core machine cannot embed for real.
Queries are real texts embedded by the same model.

Measured side by side in one run, on the same table and queries:
* exact: `kernels.maxsim_topk` over all tokens held in memory (float16 → float32 per chunk);
* exact-scan: the searcher's exact path (streams the token column from Lance per query);
* index: IVF_HNSW_SQ (cosine) + refine + exact re-rank of the candidates (the searcher's index path);
recall@10 of the index path against exact MaxSim, p50/p95 latency, queries/s, index build time and
on-disk sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import time
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
import torch

from mvclam.engine.search import CatalogSearcher, build_index
from mvclam.engine.search.searcher import _tokens_from_arrow
from mvclam.engine.store.schema import multivector_array, vector_array
from mvclam.kernels import maxsim_topk

QUERIES = [
    "a beta-lactam antibiotic active against gram-negative bacteria",
    "an aromatic carboxylic acid",
    "a steroid hormone",
    "a sulfonamide antibacterial drug",
    "a tertiary amine with a piperazine ring",
    "a benzodiazepine with anxiolytic activity",
    "a flavonoid with antioxidant properties",
    "a nucleoside analogue antiviral",
    "an alkaloid isolated from plants",
    "a fatty acid with a long aliphatic chain",
    "a kinase inhibitor containing a pyrimidine",
    "an organochlorine pesticide",
    "a peptide containing cysteine residues",
    "a monosaccharide in its pyranose form",
    "an ester used as a fragrance",
    "a heterocyclic compound with a thiophene ring",
]


def directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def synthetic_table(seed: pa.Table, rows: int, noise: float, rng: np.random.Generator) -> pa.Table:
    """`rows` rows around the seed molecules' real tokens (float16, like a production table)."""
    tokens = _tokens_from_arrow(seed["tokens"]).float().numpy()
    parents = rng.integers(0, len(tokens), size=rows)
    batches = []
    for start in range(0, rows, 20_000):
        chosen = parents[start : start + 20_000]
        noisy = tokens[chosen] + noise * rng.standard_normal(
            (len(chosen), *tokens.shape[1:]), dtype=np.float32
        )
        noisy /= np.linalg.norm(noisy, axis=-1, keepdims=True)
        pooled = noisy.mean(axis=1)
        pooled /= np.linalg.norm(pooled, axis=-1, keepdims=True)
        props = seed.take(pa.array(chosen))
        batches.append(
            pa.table(
                {
                    "id": pa.array([f"S{start + i:08d}" for i in range(len(chosen))]),
                    "canonical_smiles": props["canonical_smiles"],
                    "inchikey": props["inchikey"],
                    "tokens": multivector_array(noisy.astype(np.float16)),
                    "pooled": vector_array(pooled.astype(np.float16)),
                    "mw": props["mw"],
                    "hbd": props["hbd"],
                    "model_version": props["model_version"],
                }
            )
        )
    return pa.concat_tables(batches)


def latencies(call, queries: list[str]) -> dict[str, float]:
    call(queries[0])  # warm-up (caches, lazy imports)
    times = []
    for query in queries:
        started = time.perf_counter()
        call(query)
        times.append(time.perf_counter() - started)
    times_ms = sorted(1000 * t for t in times)
    return {
        "p50_ms": statistics.median(times_ms),
        "p95_ms": times_ms[min(len(times_ms) - 1, int(0.95 * len(times_ms)))],
        "queries_per_s": len(times) / sum(times),
    }


def measure(rows: int, seed: pa.Table, model, queries: list[str], args: argparse.Namespace, rng) -> dict:
    workdir = Path(args.workdir) / f"rows_{rows}"
    shutil.rmtree(workdir, ignore_errors=True)
    db = lancedb.connect(str(workdir))
    started = time.perf_counter()
    table = db.create_table("molecules", synthetic_table(seed, rows, args.noise, rng))
    write_s = time.perf_counter() - started
    data_bytes = directory_bytes(workdir)
    searcher = CatalogSearcher(workdir, "molecules", model=model)
    entry: dict = {"rows": rows, "write_s": write_s, "table_bytes": data_bytes}

    # Exact, in memory: the brute-force baseline at its best (tokens already loaded).
    tokens = _tokens_from_arrow(table.to_lance().to_table(columns=["tokens"])["tokens"])
    ids = table.to_lance().to_table(columns=["id"])["id"].to_pylist()
    entry["tokens_in_memory_bytes"] = tokens.numel() * tokens.element_size()

    def exact_ids(query: str) -> list[str]:
        vector = searcher.embed_query(query).to(tokens.dtype)
        _, index, _ = maxsim_topk(vector[None], tokens, k=args.k)
        return [ids[i] for i in index[0].tolist()]

    def indexed(query: str) -> list:
        return searcher.search_text(query, k=args.k)

    truth = {q: exact_ids(q) for q in queries}
    entry["exact_in_memory"] = latencies(exact_ids, queries)
    entry["exact_scan"] = latencies(lambda q: searcher.search_text(q, k=args.k, exact=True), queries)
    entry["query_embedding_ms_p50"] = latencies(searcher.embed_query, queries)["p50_ms"]

    started = time.perf_counter()
    index_report = build_index(table, index_type="IVF_HNSW_SQ")
    entry["index_build_s"] = time.perf_counter() - started
    entry["index"] = index_report.to_dict()
    entry["index_bytes_per_million_rows"] = (index_report.size_bytes or 0) * 1e6 / rows
    entry["table_bytes_per_million_rows"] = data_bytes * 1e6 / rows
    for refine in (1, 5):
        searcher.refine_factor = refine
        found = {q: [h.id for h in indexed(q)] for q in queries}
        entry[f"index_refine{refine}"] = {
            **latencies(indexed, queries),
            "recall_at_10": float(np.mean([len(set(found[q]) & set(truth[q])) / args.k for q in queries])),
            "min_results": min(len(v) for v in found.values()),
        }
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed-db", required=True, help="a LanceDB directory written by `mvclam embed`")
    parser.add_argument("--seed-table", default="molecules")
    parser.add_argument("--model", default=None, help="the checkpoint that embedded the seed table")
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000])
    parser.add_argument("--noise", type=float, default=0.05)
    parser.add_argument("--workdir", default="runs/bench_search")
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)

    seed_searcher = CatalogSearcher(args.seed_db, args.seed_table, checkpoint=args.model)
    seed = seed_searcher.table.to_arrow()
    model = seed_searcher.model
    queries = QUERIES
    report: dict = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, no GPU",
        "seed_rows": seed.num_rows,
        "noise": args.noise,
        "queries": len(queries),
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
