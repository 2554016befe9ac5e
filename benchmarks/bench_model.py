"""Forward-pass throughput of an MV-CLAM config on this machine (not a test: run it by hand).

    python benchmarks/bench_model.py --input ../shared/data/libraries/moses_test.csv.gz --molecules 512

Views are computed first (timed separately: RDKit standardisation + ETKDGv3), then the model embeds
them at several batch sizes in eval mode (inference_mode), and embeds the same number of texts.
Prints a JSON report; the numbers quoted in docs/benchmarks.md come from this script.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import platform
import time
from pathlib import Path

import torch

from mvclam.engine.embedder import MoleculeEmbedder, load_model
from mvclam.engine.views import compute_views_batch

FALLBACK_SMILES = [
    "CC(=O)Oc1ccccc1C(=O)O",
    "Cn1c(=O)c2c(ncn2C)n(C)c1=O",
    "CC(C)Cc1ccc(cc1)[C@@H](C)C(=O)O",
    "CC1([C@@H](N2[C@H](S1)[C@@H](C2=O)NC(=O)Cc3ccccc3)C(=O)O)C",
]


def read_smiles(path: Path | None, limit: int) -> list[str]:
    if path is None:
        return (FALLBACK_SMILES * (limit // len(FALLBACK_SMILES) + 1))[:limit]
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as handle:
        reader = csv.DictReader(handle)
        column = next(c for c in reader.fieldnames or [] if c.lower() == "smiles")
        return [row[column] for _, row in zip(range(limit), reader, strict=False)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, default=None, help="CSV(.gz) with a SMILES column")
    parser.add_argument("--molecules", type=int, default=256)
    parser.add_argument("--config", default="small")
    parser.add_argument("--batch-sizes", default="16,64")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    smiles = read_smiles(args.input, args.molecules)
    start = time.perf_counter()
    results = compute_views_batch(smiles)
    view_seconds = time.perf_counter() - start
    views = [r.views for r in results if r.views is not None]

    model = load_model(config=args.config)
    report: dict[str, object] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {args.threads}",
        "device": str(next(model.parameters()).device),
        "config": args.config,
        "parameters": model.parameter_counts(),
        "molecules": len(smiles),
        "view_failures": len(smiles) - len(views),
        "mean_heavy_atoms": sum(v.num_atoms for v in views) / max(1, len(views)),
        "views_molecules_per_s_single_process": len(smiles) / view_seconds,
        "encoder": {},
    }
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        embedder = MoleculeEmbedder(model, batch_size=batch_size)
        embedder.embed_views(views[: 2 * batch_size])  # warm-up
        start = time.perf_counter()
        embedder.embed_views(views)
        seconds = time.perf_counter() - start
        report["encoder"][f"batch_{batch_size}"] = {"molecules_per_s": len(views) / seconds}
    texts = [
        f"a molecule number {i} that is a beta-lactam antibiotic active against bacteria"
        for i in range(len(views))
    ]
    embedder = MoleculeEmbedder(model, batch_size=64)
    start = time.perf_counter()
    embedder.embed_texts(texts)
    report["texts_per_s"] = len(texts) / (time.perf_counter() - start)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
