"""``mvclam train stage1|stage2``: one process by default, Ray Train's TorchTrainer for ``--workers N``.

The same ``train_loop`` runs in both cases; Ray only launches it on every worker. Killing a run
and starting the same command again resumes from ``OUTPUT/checkpoints/last``.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

from mvclam.engine.training import TrainConfig, TrainingResult, train_loop
from mvclam.jobs.cli_args import add_overrides_argument
from mvclam.jobs.common import init_ray


def load_train_config(stage: str, config: str | None, overrides: list[str]) -> TrainConfig:
    """Start from configs/train_<stage>.yaml (or --config FILE), then apply key=value overrides."""
    return TrainConfig.load(stage, config, overrides)


def run_training(config: TrainConfig) -> TrainingResult | None:
    if config.num_workers <= 1 and not config.ray_address:
        return train_loop(asdict(config))
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    # Ray's own choice without an address (an existing local cluster, else a new one); worker logs shown.
    init_ray(config.ray_address, private=False, log_to_driver=True)
    output = Path(config.output_dir).resolve()
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=asdict(config),
        scaling_config=ScalingConfig(num_workers=config.num_workers, use_gpu=config.use_gpu),
        # Same name + storage path on a re-run lets Ray Train resume the run's latest checkpoint.
        run_config=RunConfig(name=f"mvclam-{config.stage}", storage_path=str(output / "ray")),
    )
    trainer.fit()
    return None


def add_train_subcommand(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="train stage 1 (alignment) or stage 2 (captioning LLM)")
    parser.add_argument("stage", choices=["stage1", "stage2"])
    parser.add_argument("--config", default=None, help="training YAML (default: configs/train_<stage>.yaml)")
    parser.add_argument("--data", dest="data_dir", default=None, help="directory written by `mvclam prepare`")
    parser.add_argument("--out", dest="output_dir", default=None, help="run directory (checkpoints, metrics)")
    parser.add_argument("--init-from", default=None, help="checkpoint to start from")
    parser.add_argument("--workers", dest="num_workers", type=int, default=None, help=">1: Ray Train workers")
    parser.add_argument("--gpu", dest="use_gpu", action="store_true", default=None)
    parser.add_argument("--address", dest="ray_address", default=None, help="Ray cluster address")
    add_overrides_argument(parser, "epochs=3 (model: --set model_overrides=[...])")
    parser.set_defaults(handler=_cmd_train)

    export = subparsers.add_parser(
        "export", help="compact copy of a stage-1 checkpoint for shipping (float16)"
    )
    export.add_argument("checkpoint", help="stage-1 checkpoint directory")
    export.add_argument("--out", required=True, help="directory to write")
    export.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default="float16")
    export.set_defaults(handler=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    import torch

    from mvclam.engine.models.checkpoint import read_manifest
    from mvclam.engine.models.export import export_checkpoint

    target = export_checkpoint(args.checkpoint, args.out, getattr(torch, args.dtype))
    size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    print(
        f"exported {args.checkpoint} -> {target} (version {read_manifest(target)['model_version']}, {size / 1e6:.1f} MB)"
    )
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    config = load_train_config(args.stage, args.config, args.overrides)
    for name in ("data_dir", "output_dir", "init_from", "num_workers", "use_gpu", "ray_address"):
        value = getattr(args, name)
        if value is not None:
            setattr(config, name, value)
    result = run_training(config)
    if result is not None:
        state = result.state
        where = result.final_checkpoint or result.output_dir / "checkpoints" / "last"
        status = "stopped at the time limit" if result.stopped_early else "finished"
        print(
            f"{config.stage} {status}: step {state.step}, {state.elapsed_seconds / 60:.1f} min; checkpoint {where}"
        )
    return 0
