"""``mvclam caption``: ad-hoc captioning on the CPU through the transformers backend.

    mvclam caption --smiles "CC(=O)Oc1ccccc1C(=O)O" "CCO" [--model CKPT]    # TSV on stdout
    mvclam caption --input molecules.smi --out captions.tsv [--model CKPT]
    mvclam caption --db catalog_db --table molecules [--backend vllm] [--actors 4]   # bulk: jobs/caption_table.py

The subcommand's flags are in `jobs/caption_cli.py`. Output columns: id, smiles, caption, error,
references; one row per input (a .smi line is ``SMILES [id]``; an empty line or a molecule whose
views fail gives a row with an error and no caption). `references` is the caption's provenance: a
JSON list of the described molecules its prompt cited (`id`, Tanimoto `similarity`), `[]` for a
captioner that cites none. `--references DB/TABLE` cites a LanceDB table of described molecules
instead of the set the captioner was trained with.
"""

from __future__ import annotations

import csv
import json
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TextIO

from mvclam.engine.io import split_smi_line

COLUMNS = ("id", "smiles", "caption", "error", "references")


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

    def provenance(self) -> list[dict[str, object]]:
        return []


def read_smi(path: Path) -> list[InputRow]:
    """Every line is a row (numbered from 1 when it has no id), empty lines included. Lines end at
    \n only (a lone \r is whitespace); a line that is not UTF-8 becomes a row with an error."""
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
        writer.writerow(
            [
                row.id,
                row.smiles,
                _one_line(result.caption or ""),
                _one_line(result.error or ""),
                json.dumps(result.provenance()),
            ]
        )


def run_caption(
    rows: list[InputRow],
    model: str | None = None,
    config: str | None = None,
    overrides: list[str] | None = None,
    batch_size: int = 16,
    max_new_tokens: int = 128,
    num_beams: int = 1,
    threads: int | None = None,
    out: str | Path | None = None,
    references: str | None = None,
    reference_column: str = "description",
) -> int:
    """Caption `rows` with the transformers backend; TSV to `out` (default: stdout). `references`:
    a LanceDB `DB/TABLE` of described molecules to cite instead of the captioner's own set."""
    import torch

    from mvclam.engine.captioning import UNTRAINED_WARNING, GenerationSettings, load_captioning
    from mvclam.engine.captioning.references import open_reference_table

    if threads:
        torch.set_num_threads(threads)
    settings = GenerationSettings(max_new_tokens=max_new_tokens, num_beams=num_beams)
    cited = open_reference_table(references, reference_column) if references else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        captioning = load_captioning(
            model, config, overrides, batch_size=batch_size, settings=settings, references=cited
        )
    if cited is not None and captioning.references is None:
        raise SystemExit("--references: this captioner was trained without references, so it cites none")
    for warning in caught:
        if str(warning.message) == UNTRAINED_WARNING:
            print(f"WARNING: {UNTRAINED_WARNING}", file=sys.stderr)
    results = caption_rows(captioning, rows)
    if out:
        with open(out, "w", encoding="utf-8", newline="") as handle:
            write_rows(handle, rows, results)
        failed = sum(not r.ok for r in results)
        print(f"wrote {len(rows)} rows ({failed} with an error) to {out}", file=sys.stderr)
    else:
        write_rows(sys.stdout, rows, results)
    return 0
