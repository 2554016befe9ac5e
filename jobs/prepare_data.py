"""`mvclam prepare`: the view cache of the pair files (and optionally of the L+M-24 weak labels).

    mvclam prepare --out runs/data/v2                       # all *.tsv in <data-dir>/pairs
    mvclam prepare --out runs/data/v2 --weak-limit 30000    # + weak labels (after the pairs)
    mvclam prepare --out DIR --pairs a.tsv b.tsv --no-weak

<data-dir> is --data-dir, else $MVCLAM_DATA_DIR, else ../shared/data (from the working directory,
then from the repository). Only this job reads it; training and evaluation read the prepared DIR.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mvclam.jobs.cli_args import add_overrides_argument
from mvclam.jobs.common import default_data_dir

DEFAULT_WEAK_FILE = "lpm24/train_props.txt.gz"


def default_pair_files(data_dir: Path) -> list[Path]:
    files = sorted((data_dir / "pairs").glob("*.tsv"))
    if not files:
        raise SystemExit(f"no pair files in {data_dir / 'pairs'}: pass --pairs or --data-dir")
    return files


def run_prepare(args: argparse.Namespace) -> int:
    from mvclam.engine.data import prepare_pairs, prepare_weak_labels
    from mvclam.engine.models.config import load_config

    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    config = load_config(args.config, args.overrides).views
    out = Path(args.out)
    if not args.skip_pairs:
        files = [Path(p) for p in args.pairs] if args.pairs else default_pair_files(data_dir)
        entry = prepare_pairs(files, out, workers=args.workers, config=config)
        print(json.dumps({"pairs": entry["counts"], "errors": entry["errors_by_code"]}, indent=2))
    if args.weak_limit != 0:
        weak_file = Path(args.weak_file) if args.weak_file else data_dir / DEFAULT_WEAK_FILE
        limit = None if args.weak_limit < 0 else args.weak_limit
        entry = prepare_weak_labels(
            weak_file,
            out,
            limit=limit,
            seed=args.seed,
            workers=args.workers,
            config=config,
            max_atoms=args.weak_max_atoms or None,
        )
        print(
            json.dumps(
                {k: entry[k] for k in ("rows_written", "excluded_held_out_molecules", "errors_by_code")}
            )
        )
    return 0


def add_prepare_subcommand(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "prepare", help="compute and cache the views of the pair files (and weak labels) as Parquet"
    )
    parser.add_argument("--out", required=True, help="output directory (pairs.parquet, errors.parquet, ...)")
    parser.add_argument(
        "--pairs", nargs="+", default=None, help="pair TSV files (default: <data-dir>/pairs/*.tsv)"
    )
    parser.add_argument("--data-dir", default=None, help="shared data directory (default: ../shared/data)")
    parser.add_argument(
        "--weak-limit", type=int, default=0, help="weak-label rows to prepare (0: none, -1: all eligible)"
    )
    parser.add_argument(
        "--weak-file", default=None, help=f"weak-label file (default: <data-dir>/{DEFAULT_WEAK_FILE})"
    )
    parser.add_argument(
        "--skip-pairs", action="store_true", help="only weak labels (pairs.parquet must exist)"
    )
    parser.add_argument("--seed", type=int, default=0, help="weak-label sampling and templating seed")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--config", default="small", help="model config whose `views` section is used")
    add_overrides_argument(parser, "views.max_atoms=128")
    parser.set_defaults(handler=run_prepare)
    return parser


def main(argv: list[str] | None = None) -> int:
    """`python -m mvclam.jobs.prepare_data [prepare] --out DIR ...` (until jobs/cli.py registers it)."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="mvclam")
    add_prepare_subcommand(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv if argv[:1] == ["prepare"] else ["prepare", *argv])
    return int(args.handler(args))


if __name__ == "__main__":
    raise SystemExit(main())
