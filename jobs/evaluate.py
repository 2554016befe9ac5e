"""`mvclam evaluate retrieval|captioning`: score a model and the baselines on a pair file.

    mvclam evaluate retrieval --pairs ../shared/data/pairs/*.tsv --out report.json --model CKPT
    mvclam evaluate captioning --pairs FILE.tsv --out report.json --model CKPT
    mvclam evaluate captioning --pairs FILE.tsv --predictions captions.tsv --out report.json

Any file in the shared pair format works. `--split auto` (default) evaluates only the test-split
molecules of a file that is a training source (a source of the prepared data, or one of the
shared pair files) and every row of any other file; `--split test|validation|train|all` forces it.
The baselines are trained on the train split of `--train-data` (a prepared directory or TSV files).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from mvclam.jobs.cli_args import add_model_arguments

if TYPE_CHECKING:
    from mvclam.engine.captioning.model import CaptionerConfig

DEFAULT_PREPARED = Path("runs/data/v2")
KNOWN_TRAINING_SOURCES = frozenset(
    {
        "chebi20_train",
        "chebi20_validation",
        "pubchem324k_valid",
        "pubchem324k_test",
        "pcdes_validation",
        "pcdes_test",
    }
)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def training_sources(prepared: Path | None) -> set[str]:
    sources = set(KNOWN_TRAINING_SOURCES)
    manifest = prepared / "manifest.json" if prepared else None
    if manifest and manifest.exists():
        files = json.loads(manifest.read_text()).get("pairs", {}).get("files", [])
        sources |= {Path(f).stem for f in files}
    return sources


def resolve_split(split: str, pair_files: list[str], prepared: Path | None) -> str:
    if split != "auto":
        return split
    known = training_sources(prepared)
    stems = {Path(p).stem for p in pair_files}
    if stems <= known:
        return "test"
    if stems & known:
        raise SystemExit(
            f"--split auto: {sorted(stems & known)} are training sources but {sorted(stems - known)} are not; "
            "evaluate them separately or pass --split explicitly"
        )
    return "all"


def _prepared(args: argparse.Namespace) -> Path | None:
    if args.prepared:
        return Path(args.prepared)
    return DEFAULT_PREPARED if (DEFAULT_PREPARED / "pairs.parquet").exists() else None


def _train_data(args: argparse.Namespace, prepared: Path | None, exclude: set[str]):
    from mvclam.engine.evaluation.report import load_train_data

    if args.no_baselines:
        return None
    if args.train_data:
        source = args.train_data[0] if len(args.train_data) == 1 else args.train_data
        return load_train_data(source, exclude)
    if prepared is not None:
        return load_train_data(prepared, exclude)
    from mvclam.jobs.common import default_data_dir

    pairs = sorted((default_data_dir() / "pairs").glob("*.tsv"))
    return load_train_data(pairs, exclude) if pairs else None


def _load_set(args: argparse.Namespace, config):
    from mvclam.engine.evaluation.eval_set import load_eval_set

    prepared = _prepared(args)
    split = resolve_split(args.split, args.pairs, prepared)
    eval_set = load_eval_set(args.pairs, split, config, prepared, workers=args.workers, log=_log)
    if getattr(args, "limit_molecules", None):
        eval_set = eval_set.head(args.limit_molecules)
    _log(f"evaluating {len(eval_set.data)} pairs / {len(eval_set.molecule_keys)} molecules ({split})")
    return eval_set, prepared


def _write(report: dict, out: str) -> None:
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    _log(f"wrote {path}")


def run_retrieval(args: argparse.Namespace) -> int:
    from mvclam.engine.embedder import load_model
    from mvclam.engine.evaluation.report import retrieval_report

    model = load_model(args.model, args.config, args.overrides, device=args.device)
    eval_set, prepared = _load_set(args, model.config.views)
    train = _train_data(args, prepared, set(eval_set.molecule_keys))
    report = retrieval_report(eval_set, model, args.model, train, rerank_k=args.rerank_k, log=_log)
    _write(report, args.out)
    _print_summary(report)
    return 0


def read_predictions(path: str | Path) -> dict[str, str]:
    """Caption per key from a TSV with a header: `caption` plus `cid` and/or `smiles` (no quoting)."""
    with Path(path).open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = [h.strip().lower() for h in next(reader)]
        if "caption" not in header or not ({"cid", "smiles", "id"} & set(header)):
            raise SystemExit(f"{path}: header needs `caption` and `cid` (or `id`) or `smiles`, got {header}")
        out: dict[str, str] = {}
        for row in reader:
            record = dict(zip(header, row, strict=False))
            for key in ("cid", "id", "smiles"):
                if record.get(key):
                    out.setdefault(
                        f"{'cid' if key == 'id' else key}:{record[key].strip()}", record.get("caption", "")
                    )
    return out


def _match_predictions(eval_set, predictions: dict[str, str]) -> list[str]:
    """One prediction per distinct molecule: by the cid of any of its rows, else by its SMILES
    (as written in the file or canonical)."""
    by_molecule: dict[int, str] = {}
    for row, molecule in enumerate(eval_set.truth.tolist()):
        if molecule in by_molecule:
            continue
        cid = eval_set.data.cids[row]
        views = eval_set.molecule_views[molecule]
        for key in (f"cid:{cid}", f"smiles:{views.canonical_smiles}"):
            if key in predictions:
                by_molecule[molecule] = predictions[key]
                break
    missing = len(eval_set.molecule_keys) - len(by_molecule)
    if missing:
        raise SystemExit(f"{missing} of {len(eval_set.molecule_keys)} molecules have no prediction")
    return [by_molecule[i] for i in range(len(eval_set.molecule_keys))]


def run_captioning(args: argparse.Namespace) -> int:
    from mvclam.engine.evaluation.report import caption_molecules, captioning_report
    from mvclam.engine.models.config import load_config

    if args.predictions:
        eval_set, prepared = _load_set(args, load_config(args.config or "small", args.overrides).views)
        predictions = _match_predictions(eval_set, read_predictions(args.predictions))
        source, description = str(args.predictions), None
    else:
        try:
            from mvclam.engine.captioning import load_captioning
        except ImportError as exc:
            raise SystemExit(
                f"captioning with a model needs mvclam.engine.captioning, which is not importable ({exc}); "
                "score existing captions with --predictions FILE.tsv"
            ) from None
        from mvclam.engine.captioning import GenerationSettings

        settings = GenerationSettings(max_new_tokens=args.max_new_tokens, num_beams=args.num_beams)
        from mvclam.engine.captioning.references import open_reference_table

        cited = open_reference_table(args.references, args.reference_column) if args.references else None
        captioner = load_captioning(
            args.model,
            args.config,
            args.overrides,
            batch_size=args.batch_size,
            settings=settings,
            device=args.device,
            references=cited,
        )
        if args.prompt:
            captioner.captioner.config = ablated_prompt(captioner.captioner.config, args.prompt)
            if not captioner.captioner.config.references:
                captioner.references = None
        eval_set, prepared = _load_set(args, captioner.mvclam.config.views)
        references = None
        if captioner.references is not None:
            # The references hold no evaluated molecule (by InChIKey), whatever set was given.
            captioner.references = captioner.references.without(eval_set.molecule_keys)
            references = {
                **captioner.references.describe(),
                "k": captioner.captioner.config.references,
                "evaluated_molecules_in_references": len(
                    set(captioner.references.inchikeys) & set(eval_set.molecule_keys)
                ),
            }
        started = time.perf_counter()
        predictions = caption_molecules(eval_set, captioner.caption_views)
        caption_seconds = time.perf_counter() - started
        source = "generated"
        description = {
            "checkpoint": args.model,
            "captioner_trained": bool(getattr(captioner, "trained", False)),
            "captioner_version": captioner.captioner.version,
            "prompt": {
                k: captioner.captioner.config.to_dict()[k]
                for k in ("soft_prompt", "smiles_chars", "references", "reference_tokens")
            },
            "references": references,
            "generation": settings.to_dict(),
            # soft prompts, reference look-up and generation; views come from the cache
            "caption_seconds": round(caption_seconds, 1),
            "captions_per_s": round(len(predictions) / max(caption_seconds, 1e-9), 3),
            "batch_size": args.batch_size,
            "torch_threads": _torch_threads(),
        }
        if args.save_predictions:
            _save_predictions(args.save_predictions, eval_set, predictions)
    train = _train_data(args, prepared, set(eval_set.molecule_keys))
    report = captioning_report(eval_set, predictions, source, train, description)
    _write(report, args.out)
    _print_summary(report)
    return 0


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


PROMPT_PARTS = {"soft_prompt": bool, "smiles_chars": int, "references": int}


def ablated_prompt(config: CaptionerConfig, items: list[str]) -> CaptionerConfig:
    """The captioner's config with prompt parts changed at inference time (the ablations of
    docs/training.md): `soft_prompt=false`, `references=0`, `smiles_chars=0`. Only parts can be
    removed or shrunk: the captioner never learned more references or a longer SMILES."""
    changes: dict[str, object] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or key not in PROMPT_PARTS:
            raise SystemExit(f"--prompt takes KEY=VALUE with KEY one of {sorted(PROMPT_PARTS)}, got '{item}'")
        if PROMPT_PARTS[key] is bool:
            if raw.lower() not in ("true", "false"):
                raise SystemExit(f"--prompt {key} takes true or false, got '{raw}'")
            value: object = raw.lower() == "true"
        else:
            try:
                value = int(raw)
            except ValueError:
                raise SystemExit(f"--prompt {key} takes an integer, got '{raw}'") from None
        if value > getattr(config, key):
            raise SystemExit(
                f"--prompt {key}={raw} exceeds the trained prompt ({key}={getattr(config, key)})"
            )
        changes[key] = value
    try:
        return config.with_prompt(**changes)
    except ValueError as exc:
        raise SystemExit(f"--prompt: {exc}") from None


def _save_predictions(path: str, eval_set, predictions: list[str]) -> None:
    first_row: dict[int, int] = {}
    for row, molecule in enumerate(eval_set.truth.tolist()):
        first_row.setdefault(molecule, row)
    with Path(path).open("w", encoding="utf-8") as handle:
        handle.write("cid\tsmiles\tcaption\n")
        for molecule, caption in enumerate(predictions):
            clean = " ".join(caption.split())  # the format has no quoting: no tabs/newlines inside
            cid = eval_set.data.cids[first_row[molecule]]
            handle.write(f"{cid}\t{eval_set.molecule_views[molecule].canonical_smiles}\t{clean}\n")


def _print_summary(report: dict) -> None:
    """One line per scorer and direction on stdout."""
    for scorer, metrics in report["results"].items():
        if report["task"] == "captioning":
            shown = {
                k: (round(v, 4) if isinstance(v, float) else v)
                for k, v in metrics.items()
                if k != "meteor_note"
            }
            print(json.dumps({"scorer": scorer, **shown}))
            continue
        for direction, values in metrics.items():
            keep = ("mrr", "hits@1", "hits@10", "recall@20", "in_batch_accuracy", "in_batch_recall@20")
            print(
                json.dumps(
                    {"scorer": scorer, "direction": direction, **{k: round(values[k], 4) for k in keep}}
                )
            )


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pairs", nargs="+", required=True, help="pair TSV file(s): cid, smiles, description"
    )
    parser.add_argument("--out", required=True, help="report JSON path")
    add_model_arguments(parser)
    parser.add_argument(
        "--split", default="auto", choices=["auto", "test", "validation", "train", "all"],
        help="molecules to evaluate (auto: test split of training sources, everything otherwise)",
    )  # fmt: skip
    parser.add_argument(
        "--prepared", default=None, help=f"prepared view cache (default: {DEFAULT_PREPARED} if present)"
    )
    parser.add_argument(
        "--train-data", nargs="+", default=None, help="baseline training data: prepared dir or TSVs"
    )
    parser.add_argument("--no-baselines", action="store_true")
    parser.add_argument("--workers", type=int, default=1, help="processes for views not in the cache")
    parser.add_argument("--device", default=None)


def add_evaluate_subcommand(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("evaluate", help="retrieval / captioning metrics with baselines, as JSON")
    tasks = parser.add_subparsers(dest="task", required=True)
    retrieval = tasks.add_parser("retrieval", help="text<->molecule retrieval (MolCA and Text2Mol protocols)")
    _common(retrieval)
    retrieval.add_argument("--rerank-k", type=int, default=20, help="re-rank this many candidates (0: off)")
    retrieval.set_defaults(handler=run_retrieval)
    captioning = tasks.add_parser("captioning", help="BLEU, ROUGE, METEOR of generated or given captions")
    _common(captioning)
    captioning.add_argument(
        "--predictions", default=None, help="TSV with cid (or smiles) and caption columns"
    )
    captioning.add_argument("--save-predictions", default=None, help="write generated captions to this TSV")
    captioning.add_argument("--max-new-tokens", type=int, default=128)
    captioning.add_argument("--num-beams", type=int, default=1, help="1: greedy")
    captioning.add_argument("--batch-size", type=int, default=16, help="molecules per generate call")
    captioning.add_argument(
        "--references",
        default=None,
        help="DB/TABLE of described molecules to cite (default: the captioner's set)",
    )
    captioning.add_argument("--reference-column", default="description")
    captioning.add_argument(
        "--limit-molecules", type=int, default=None,
        help="caption only the first N molecules (a quick look; the report says so)",
    )  # fmt: skip
    captioning.add_argument(
        "--prompt", action="append", default=[], metavar="KEY=VALUE",
        help="ablate a prompt part at inference: soft_prompt=false, references=0, smiles_chars=0 (repeatable)",
    )  # fmt: skip
    captioning.set_defaults(handler=run_captioning)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mvclam")
    add_evaluate_subcommand(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
