"""Cost of each stage-2 choice (issue 20): seconds per training step of the captioner, one prompt
or adapter choice changed at a time from the shipped recipe.

A step is what the trainer does per batch: prompt building, the LLM forward and backward through
the LoRA-wrapped SmolLM2 and the AdamW update. The molecules are real training pairs; their
references come from the shipped reference set (never the molecule itself). The query states
are random: the frozen MQ-Former forward costs the same whatever they hold and is timed apart
(`mqformer_seconds`). Run it on an idle machine; `--threads` torch threads.

    python benchmarks/stage2_step_cost.py --steps 2 --out reports/stage2_step_cost.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch

from mvclam.engine.captioning.model import CaptionerConfig, MoleculeCaptioner, PromptContext
from mvclam.engine.captioning.references import ReferenceSet, resolve_reference_set

BASE = dict(
    lora_r=8, lora_alpha=16, lora_targets="attention", max_description_tokens=128,
    smiles_chars=64, references=2, reference_tokens=48, lora_dropout=0.05,
)  # fmt: skip
VARIANTS: dict[str, dict] = {
    "shipped (k=2 x 48 tokens, SMILES 64, r8 attention, targets 128)": {},
    "references cut at 96 tokens (session-13 continuation)": {"reference_tokens": 96},
    "k=1 reference": {"references": 1},
    "k=4 references": {"references": 4},
    "no references": {"references": 0},
    "no SMILES": {"smiles_chars": 0},
    "no soft prompt": {"soft_prompt": False},
    "LoRA r4 query-value": {"lora_r": 4, "lora_alpha": 8, "lora_targets": "query-value"},
    "LoRA r16 all-linear": {"lora_r": 16, "lora_alpha": 32, "lora_targets": "all-linear"},
    "targets cut at 64 tokens": {"max_description_tokens": 64},
    "targets cut at 256 tokens": {"max_description_tokens": 256},
}


def batch_of_pairs(pairs: Path, batch_size: int, offset: int) -> list[dict]:
    """`batch_size` training-split pairs (id, SMILES, InChIKey, description)."""
    table = pq.read_table(pairs, columns=["canonical_smiles", "inchikey", "description", "split"])
    rows = [r for r in table.to_pylist() if r["split"] == "train"]
    return rows[offset : offset + batch_size]


def time_variant(
    changes: dict, rows: list[dict], references: ReferenceSet, steps: int
) -> dict[str, float | int]:
    config = CaptionerConfig(**{**BASE, **changes})
    torch.manual_seed(0)
    captioner = MoleculeCaptioner(config).train()
    optimizer = torch.optim.AdamW(captioner.trainable_parameters(), lr=1e-4)
    cited = references.nearest([r["canonical_smiles"] for r in rows], [r["inchikey"] for r in rows], 4)
    contexts = [
        PromptContext(smiles=r["canonical_smiles"] if config.smiles_chars else "", references=tuple(c))
        for r, c in zip(rows, cited, strict=True)
    ]
    descriptions = [r["description"] for r in rows]
    states = torch.randn(len(rows), config.num_query_tokens, config.qformer_hidden_size)
    query_states = states if config.soft_prompt else None
    inputs = captioner.build_training_inputs(query_states, descriptions, contexts=contexts)
    seconds = []
    for _ in range(steps + 1):  # the first step warms up (allocations, autograd graph)
        started = time.perf_counter()
        loss = captioner(query_states, descriptions, contexts if config.uses_context else None)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seconds.append(time.perf_counter() - started)
    timed = seconds[1:]
    return {
        "seconds_per_step": round(sum(timed) / len(timed), 2),
        "tokens_per_row": round(int(inputs.attention_mask.sum()) / len(rows), 1),
        "padded_width": int(inputs.attention_mask.shape[1]),
        "trainable_parameters": sum(p.numel() for p in captioner.trainable_parameters()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", default="runs/data/v2/pairs.parquet")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--offset", type=int, default=0, help="first training pair of the batch")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per variant (after one warm-up)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="*", help="variant names to run (default: all)")
    parser.add_argument("--out", default="reports/stage2_step_cost.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = batch_of_pairs(Path(args.pairs), args.batch_size, args.offset)
    references = ReferenceSet.load(resolve_reference_set("pairs-v2-train"))
    results = {}
    for name, changes in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        results[name] = {"changes": changes, **time_variant(changes, rows, references, args.steps)}
        print(f"{name:70s} {results[name]['seconds_per_step']:6.2f} s/step", flush=True)
    report = {
        "machine": {"cpu": platform.processor() or platform.machine(), "torch_threads": args.threads},
        "batch_size": args.batch_size,
        "timed_steps": args.steps,
        "base": BASE,
        "variants": results,
    }
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
