"""``mvclam caption``: ad-hoc captioning on the CPU through the transformers backend.

    mvclam caption --smiles "CC(=O)Oc1ccccc1C(=O)O" "CCO" [--model CKPT]    # TSV on stdout
    mvclam caption --input molecules.smi --out captions.tsv [--model CKPT]

Output columns: id, smiles, caption, error; one row per input (a .smi line is ``SMILES [id]``; an
empty line or a molecule whose views fail gives a row with an error and no caption).
"""

from __future__ import annotations

import argparse
import csv
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

COLUMNS = ("id", "smiles", "caption", "error")


@dataclass
class InputRow:
    id: str
    smiles: str


def read_smi(path: Path) -> list[InputRow]:
    """Every line is a row (numbered from 1 when it has no id), empty lines included."""
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            parts = line.strip().split(maxsplit=1)
            smiles = parts[0] if parts else ""
            rows.append(InputRow(id=parts[1].strip() if len(parts) > 1 else str(number), smiles=smiles))
    return rows


def _one_line(text: str) -> str:
    return " ".join(text.split())  # captions and reasons must not break the TSV


def write_rows(handle: TextIO, rows: list[InputRow], results: list) -> None:
    writer = csv.writer(handle, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(COLUMNS)
    for row, result in zip(rows, results, strict=True):
        writer.writerow([row.id, row.smiles, _one_line(result.caption or ""), _one_line(result.error or "")])


def _cmd_caption(args: argparse.Namespace) -> int:
    import torch

    from mvclam.engine.captioning import UNTRAINED_WARNING, GenerationSettings, load_captioning

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.smiles:
        rows = [InputRow(id=str(i), smiles=s) for i, s in enumerate(args.smiles, start=1)]
    else:
        rows = read_smi(Path(args.input))
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, num_beams=args.num_beams)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        captioning = load_captioning(
            args.model, args.config, args.overrides, batch_size=args.batch_size, settings=settings
        )
    for warning in caught:
        if str(warning.message) == UNTRAINED_WARNING:
            print(f"WARNING: {UNTRAINED_WARNING}", file=sys.stderr)
    results = captioning.caption_smiles([r.smiles for r in rows])
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
    parser.add_argument("--out", help="TSV to write (with --input; default: stdout)")
    parser.add_argument(
        "--model", default=None, help="checkpoint directory (default: a fresh model from --config)"
    )
    parser.add_argument("--config", default="small", help="config name shipped in configs/ or a YAML path")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--num-beams", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.set_defaults(handler=_cmd_caption)
    return parser
