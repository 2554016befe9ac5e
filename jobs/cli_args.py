"""Arguments shared by the subcommands (kept apart from jobs/cli.py, which imports every subcommand)."""

from __future__ import annotations

import argparse


def add_overrides_argument(
    parser: argparse.ArgumentParser, example: str, dest: str = "overrides", none_when_absent: bool = False
) -> None:
    """The repeatable ``--set KEY=VALUE`` option shared by every subcommand that reads a YAML config.
    Absent, it is an empty list, or None with `none_when_absent` (a job config's own overrides stay)."""
    parser.add_argument(
        "--set",
        dest=dest,
        action="append",
        default=None if none_when_absent else [],
        metavar="KEY=VALUE",
        help=f"override a config value, e.g. --set {example} (repeatable)",
    )


MODEL_HELP = "checkpoint directory, or 'fresh' (default: the shipped model)"


def add_model_argument(parser: argparse.ArgumentParser, help_text: str = MODEL_HELP) -> None:
    """``--model``: the checkpoint a command loads (default: the shipped trained model)."""
    parser.add_argument("--model", default=None, help=help_text)


def add_model_arguments(
    parser: argparse.ArgumentParser,
    config_dest: str = "config",
    overrides_dest: str = "overrides",
    none_when_absent: bool = False,
) -> None:
    """The ``--model`` / ``--config`` / ``--set`` trio: a checkpoint, or a fresh model from a model
    config with key=value overrides (see `add_overrides_argument` for `none_when_absent`)."""
    add_model_argument(parser)
    parser.add_argument(
        "--config",
        dest=config_dest,
        default=None,
        help="config (name in configs/ or YAML) of a fresh model; needs no --model",
    )
    add_overrides_argument(parser, "qformer.num_query_tokens=8", overrides_dest, none_when_absent)
