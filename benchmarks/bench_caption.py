"""CPU captioning throughput: the batched transformers backend against a one-molecule-at-a-time loop.

    python benchmarks/bench_caption.py --molecules 200 --max-new-tokens 32 [--model CKPT]

Both modes generate from the same precomputed soft prompts (views → MQ-Former → projector, timed
separately), with the same settings, so the ratio is the LLM decoding alone. Greedy decoding must
give identical captions in both modes; the report says whether it did. Prints a JSON report; the
numbers in docs/benchmarks.md ("Captioning") come from this script. Not a test: run it by hand.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import platform
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


def _timed(label: str, run) -> tuple[list[str], float]:
    start = time.perf_counter()
    captions = run()
    seconds = time.perf_counter() - start
    print(f"{label}: {seconds:.1f} s", flush=True)
    return captions, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, default=DEFAULT_INPUT, help="CSV(.gz) with a SMILES column")
    parser.add_argument("--molecules", type=int, default=200)
    parser.add_argument("--model", default=None, help="checkpoint (default: the shipped trained model)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--num-beams", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        captioning = load_captioning(args.model, batch_size=args.batch_size)
        load_seconds = time.perf_counter() - start
    views = [
        r.views for r in compute_views_batch(read_smiles(args.input, args.molecules)) if r.views is not None
    ]
    start = time.perf_counter()
    prompts = [p for i in range(0, len(views), 64) for p in captioning.prompt_embeds(views[i : i + 64])]
    prompt_seconds = time.perf_counter() - start
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, num_beams=args.num_beams)
    backend, tokenizer = captioning.backend, captioning.captioner.tokenizer

    batched, batched_seconds = _timed(
        "batched",
        lambda: [
            c
            for i in range(0, len(prompts), args.batch_size)
            for c in backend.generate(prompts[i : i + args.batch_size], settings)
        ],
    )
    single, single_seconds = _timed(
        "one at a time", lambda: [backend.generate([p], settings)[0] for p in prompts]
    )

    def generated_tokens(captions: list[str]) -> int:
        # Decoded text re-tokenised, plus the end-of-turn token when generation stopped early.
        return sum(
            len(ids) + (len(ids) < args.max_new_tokens)
            for ids in tokenizer(captions, add_special_tokens=False)["input_ids"]
        )

    n = len(prompts)
    report = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "threads": args.threads,
        },
        "captioner": "trained" if captioning.trained else "untrained (fresh projector + LoRA)",
        "molecules": n,
        "settings": {**settings.to_dict(), "batch_size": args.batch_size},
        "load_seconds": round(load_seconds, 1),
        "prompt_embeds_per_second": round(n / prompt_seconds, 1),
        "batched": {
            "seconds": round(batched_seconds, 1),
            "molecules_per_second": round(n / batched_seconds, 2),
            "tokens_per_second": round(generated_tokens(batched) / batched_seconds, 1),
        },
        "one_at_a_time": {
            "seconds": round(single_seconds, 1),
            "molecules_per_second": round(n / single_seconds, 2),
            "tokens_per_second": round(generated_tokens(single) / single_seconds, 1),
        },
        "speedup": round(single_seconds / batched_seconds, 2),
        "identical_captions": batched == single,
        "mean_caption_tokens": round(generated_tokens(batched) / n, 1),
        "mean_caption_words": round(sum(len(c.split()) for c in batched) / n, 1),
        "examples": [
            {"smiles": v.canonical_smiles, "caption": c}
            for v, c in list(zip(views, batched, strict=True))[:3]
        ],
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
