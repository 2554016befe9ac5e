"""The `mvclam embed` subcommand; `jobs/cli.py` registers it with `add_embed_subcommand(sub)`."""

from __future__ import annotations

import argparse
import json
import sys

from mvclam.jobs.cli_args import add_model_arguments


def add_embed_subcommand(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "embed",
        help="embed a compound catalog into a LanceDB table (Ray Data; resumable)",
        description="Embed a catalog (.smi/.txt, CSV/TSV, Parquet, SDF, optionally .gz; paths or globs) "
        "into a LanceDB table plus an errors table. Re-running resumes: ids already done for this "
        "model version are skipped. Defaults come from configs/embed.yaml.",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="catalog files, directories or globs")
    parser.add_argument("--db", required=True, help="LanceDB directory (created if missing)")
    parser.add_argument("--table", default=None, help="embeddings table (default: molecules)")
    parser.add_argument("--errors-table", default=None, help="errors table (default: <table>_errors)")
    add_model_arguments(
        parser, config_dest="model_config", overrides_dest="model_overrides", none_when_absent=True
    )
    parser.add_argument("--job-config", default=None, help="YAML job config (default: configs/embed.yaml)")
    parser.add_argument("--smiles-column", default=None)
    parser.add_argument("--id-column", default=None)
    parser.add_argument("--token-dtype", choices=["float32", "float16"], default=None)
    parser.add_argument("--batch-size", dest="encoder_batch_size", type=int, default=None)
    parser.add_argument("--views-batch-size", type=int, default=None)
    parser.add_argument("--encoders", type=int, default=None, help="encoder actors")
    parser.add_argument("--views-workers", type=int, default=None, help="cap on concurrent views tasks")
    parser.add_argument("--commit-rows", type=int, default=None, help="rows per LanceDB commit")
    parser.add_argument(
        "--commit-seconds",
        type=float,
        default=None,
        help="commit at least this often (seconds) while rows are pending; bounds what a kill loses",
    )
    parser.add_argument(
        "--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else local)"
    )
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray instance")
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=None)
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(handler=_cmd_embed)
    return parser


def _cmd_embed(args: argparse.Namespace) -> int:
    from mvclam.jobs.embed import load_embed_job, run_embed

    fields = [
        "inputs",
        "db",
        "table",
        "errors_table",
        "model",
        "model_config",
        "model_overrides",
        "smiles_column",
        "id_column",
        "token_dtype",
        "encoder_batch_size",
        "views_batch_size",
        "encoders",
        "views_workers",
        "commit_rows",
        "commit_seconds",
        "address",
        "num_cpus",
        "progress",
    ]
    job = load_embed_job(args.job_config, **{name: getattr(args, name) for name in fields})
    summary = run_embed(job)
    print(json.dumps(summary.to_dict(), indent=2) if args.json else summary.format())
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m mvclam.jobs.embed_cli INPUT --db DIR …` (same as `mvclam embed …`)."""
    parser = argparse.ArgumentParser(prog="mvclam embed")
    add_embed_subcommand(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["embed", *(argv if argv is not None else sys.argv[1:])])
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
