"""The ``mvclam`` command line: a thin layer over the Python API (subcommands grow with the jobs)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from mvclam.jobs.cli_args import add_model_arguments


def _cmd_info(args: argparse.Namespace) -> int:
    from mvclam.engine.models.config import load_config

    config = load_config(args.config or "small", args.overrides)
    payload = {"config": config.to_dict()}
    if args.count_parameters:
        from mvclam.engine.models.mvclam import MVCLAM

        payload["parameters"] = MVCLAM(config, load_pretrained=False).parameter_counts()
    print(json.dumps(payload, indent=2))
    return 0


def _cmd_views(args: argparse.Namespace) -> int:
    from mvclam.engine.models.config import load_config
    from mvclam.engine.views import compute_views_batch

    config = load_config(args.config or "small", args.overrides).views
    failed = 0
    for result, smiles in zip(compute_views_batch(args.smiles, config), args.smiles, strict=True):
        if result.ok:
            v = result.views
            row = {
                "input": smiles,
                "canonical_smiles": v.canonical_smiles,
                "inchikey": v.inchikey,
                "num_atoms": v.num_atoms,
                "num_bonds": len(v.bond_types),
                "conformer_method": v.conformer_method,
            }
        else:
            failed += 1
            row = {"input": smiles, "error": result.error.code.value, "reason": result.error.reason}
        print(json.dumps(row))
    return 1 if failed and args.strict else 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from mvclam.jobs.demo import run_demo

    run_demo(args.model, args.config)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mvclam",
        description="Text-aligned multi-view molecule embeddings (MV-CLAM): views, models and jobs.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="print the resolved model config (and parameter counts)")
    add_model_arguments(info)
    info.add_argument("--count-parameters", action="store_true")
    info.set_defaults(handler=_cmd_info)

    views = sub.add_parser("views", help="standardise SMILES and compute their 2D/3D views (JSON lines)")
    views.add_argument("smiles", nargs="+")
    views.add_argument("--strict", action="store_true", help="exit 1 if any row failed")
    add_model_arguments(views)
    views.set_defaults(handler=_cmd_views)

    from mvclam.jobs.caption_cli import add_caption_subcommand
    from mvclam.jobs.embed_cli import add_embed_subcommand
    from mvclam.jobs.evaluate import add_evaluate_subcommand
    from mvclam.jobs.prepare_data import add_prepare_subcommand
    from mvclam.jobs.search import add_search_subcommands
    from mvclam.jobs.train import add_train_subcommand

    add_embed_subcommand(sub)
    add_prepare_subcommand(sub)
    add_train_subcommand(sub)
    add_evaluate_subcommand(sub)
    add_caption_subcommand(sub)
    add_search_subcommands(sub)

    demo = sub.add_parser("demo", help="embed a few molecules and texts end to end and rank them by MaxSim")
    add_model_arguments(demo)
    demo.set_defaults(handler=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from mvclam.engine.store import CatalogStorageError

    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except CatalogStorageError as error:  # a locked or damaged table: its message says what to do
        print(f"mvclam {args.command}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
