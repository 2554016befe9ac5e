"""Training loop: runs, logs, plots, and resumes exactly where it stopped."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from test_models import tiny_config

from mvclam.engine.models import MVCLAM
from mvclam.engine.training import TrainConfig, train_loop
from mvclam.engine.training.loop import epoch_batches
from mvclam.engine.training.state import replace_directory
from mvclam.engine.training.tasks import Stage1Task, build_model, build_task
from mvclam.engine.views import MoleculeViews, compute_views

SMILES = [
    "CC(=O)Oc1ccccc1C(=O)O",
    "Cn1c(=O)c2c(ncn2C)n(C)c1=O",
    "CC(C)Cc1ccc(cc1)C(C)C(=O)O",
    "c1ccccc1",
    "CCO",
    "CC(=O)O",
    "C1CCCCC1",
    "c1ccncc1",
]
DESCRIPTIONS = [
    "an aromatic acetate ester used as an analgesic",
    "a purine alkaloid stimulant",
    "a propionic acid anti-inflammatory drug",
    "the simplest aromatic hydrocarbon",
    "a primary alcohol",
    "a short-chain carboxylic acid",
    "a saturated carbocycle",
    "an aromatic nitrogen heterocycle",
]


@dataclass
class ToyPairs:
    views: list[MoleculeViews]
    descriptions: list[str]
    group_ids: np.ndarray

    def __len__(self) -> int:
        return len(self.views)


def toy_pairs() -> tuple[ToyPairs, ToyPairs]:
    views = [compute_views(s) for s in SMILES]
    train = ToyPairs(views, DESCRIPTIONS, np.arange(len(views)))
    return train, ToyPairs(views[:4], DESCRIPTIONS[:4], np.arange(4))


@pytest.fixture(scope="module")
def toy_data() -> tuple[ToyPairs, ToyPairs]:
    return toy_pairs()


def make_task() -> Stage1Task:
    torch.manual_seed(0)
    return Stage1Task(MVCLAM(tiny_config()))


def config(out: Path, **changes) -> dict:
    base = TrainConfig(
        output_dir=str(out),
        batch_size=4,
        epochs=3,
        warmup_steps=2,
        learning_rate=1e-3,
        log_every=1,
        eval_every=3,
        eval_batches=1,
        checkpoint_every=3,
        seed=5,
    )
    return asdict(base) | changes


def test_epoch_batches_shard_one_shuffle_across_workers():
    whole = epoch_batches(10, 2, seed=1, epoch=0, rank=0, world=1)
    assert sorted(np.concatenate(whole).tolist()) == list(range(10))
    shards = [epoch_batches(10, 2, seed=1, epoch=0, rank=r, world=2) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 2  # 5 batches: the odd one is dropped so workers stay in step
    assert not set(np.concatenate(shards[0])) & set(np.concatenate(shards[1]))
    assert epoch_batches(10, 2, 1, 1, 0, 1)[0].tolist() != whole[0].tolist()  # reshuffled each epoch


def test_training_runs_logs_and_plots(tmp_path, toy_data):
    result = train_loop(config(tmp_path), task=make_task(), data=toy_data)
    assert result.state.step == 6 and result.final_checkpoint is not None
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    train_rows = [r for r in rows if r["split"] == "train"]
    validation_rows = [r for r in rows if r["split"] == "validation"]
    assert [int(r["step"]) for r in train_rows] == list(range(1, 7))
    assert [int(r["step"]) for r in validation_rows] == [3, 6]
    assert all(0.0 <= float(r["retrieval_accuracy"]) <= 1.0 for r in validation_rows)
    assert (tmp_path / "curves.png").stat().st_size > 5000
    loaded = MVCLAM.from_pretrained(result.final_checkpoint)
    assert loaded.model_version != "untrained"


KILL_SCRIPT = """
import sys, torch
sys.path.insert(0, {tests!r})
torch.set_num_threads(1)
from test_training import config, make_task, toy_pairs
from mvclam.engine.training import train_loop
train_loop(config({out!r}, epochs=20, checkpoint_every=1), task=make_task(), data=toy_pairs())
"""


def test_killed_run_resumes_to_identical_weights(tmp_path):
    """SIGKILL a training process part-way, run it again: same weights as an uninterrupted run."""
    torch.set_num_threads(1)
    interrupted = tmp_path / "interrupted"
    script = KILL_SCRIPT.format(tests=str(Path(__file__).parent), out=str(interrupted))
    process = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    state_file = interrupted / "checkpoints" / "last" / "trainer_state.json"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if state_file.exists() and json.loads(state_file.read_text())["trainer"]["step"] >= 3:
                break
            time.sleep(0.05)
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
    finally:
        process.kill()
        process.wait()
    killed_at = json.loads(state_file.read_text())["trainer"]["step"]
    assert 3 <= killed_at < 40

    resumed = train_loop(
        config(interrupted, epochs=20, checkpoint_every=1), task=make_task(), data=toy_pairs()
    )
    straight = train_loop(config(tmp_path / "straight", epochs=20), task=make_task(), data=toy_pairs())
    assert resumed.state.step == straight.state.step == 40
    a = MVCLAM.from_pretrained(straight.final_checkpoint).state_dict()
    b = MVCLAM.from_pretrained(resumed.final_checkpoint).state_dict()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-5), name
    steps = [
        int(r["step"]) for r in csv.DictReader((interrupted / "metrics.csv").open()) if r["split"] == "train"
    ]
    assert steps == list(range(1, 41))  # no duplicated or missing rows after resuming


def test_time_limit_stops_with_a_checkpoint(tmp_path, toy_data):
    result = train_loop(config(tmp_path, time_limit_minutes=0.0), task=make_task(), data=toy_data)
    assert result.stopped_early and result.state.step == 1 and result.final_checkpoint is None
    assert (tmp_path / "checkpoints" / "last" / "optimizer.safetensors").is_file()


def test_replace_directory_keeps_the_old_checkpoint_until_the_new_one_is_complete(tmp_path):
    final = tmp_path / "last"
    final.mkdir()
    (final / "marker").write_text("old")
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "marker").write_text("new")
    replace_directory(staging, final)
    assert (final / "marker").read_text() == "new" and not staging.exists()
    assert not (tmp_path / "last.old").exists()


def test_init_from_takes_loss_overrides_and_refuses_architecture_changes(tmp_path):
    source = MVCLAM(tiny_config())
    source.save_pretrained(tmp_path / "phase1")
    phase2 = TrainConfig(init_from=str(tmp_path / "phase1"), model_overrides=["loss.matching_weight=0"])
    model = build_model(phase2)
    assert model.config.loss.matching_weight == 0
    assert model.config.loss.contrastive_weight == source.config.loss.contrastive_weight
    for name, tensor in source.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    with pytest.raises(ValueError, match="only loss"):
        build_model(TrainConfig(init_from=str(tmp_path / "phase1"), model_overrides=["qformer.num_layers=2"]))


def test_trainable_prefixes_refit_only_the_matching_head(tmp_path, toy_data):
    source = MVCLAM(tiny_config())
    source.save_pretrained(tmp_path / "phase2")
    run = config(
        tmp_path / "head",
        init_from=str(tmp_path / "phase2"),
        trainable=["matching_head"],
        model_overrides=["loss.contrastive_weight=0", "loss.captioning_weight=0"],
        epochs=1,
        batch_size=4,
        eval_every=2,
        eval_batches=1,
    )
    task = build_task(TrainConfig.from_dict(run))
    before = {n: p.detach().clone() for n, p in task.module.named_parameters()}
    assert {n for n, p in task.module.named_parameters() if p.requires_grad} == {
        "matching_head.weight",
        "matching_head.bias",
    }
    train_loop(run, task=task, data=toy_data)
    changed = {n for n, p in task.module.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {"matching_head.weight", "matching_head.bias"}
    with pytest.raises(ValueError, match="match no parameter"):
        build_task(TrainConfig(init_from=str(tmp_path / "phase2"), trainable=["no_such_module"]))
    with pytest.raises(ValueError, match="applies to stage1"):
        build_task(TrainConfig(stage="stage2", init_from=str(tmp_path / "phase2"), trainable=["x"]))


def test_too_little_data_is_a_clear_error(tmp_path, toy_data):
    train, validation = toy_data
    with pytest.raises(ValueError, match="fewer than one batch"):
        train_loop(config(tmp_path, batch_size=64), task=make_task(), data=(train, validation))


def test_stage2_trains_projector_and_lora_and_saves_one_checkpoint(tmp_path, toy_data):
    from mvclam.engine.captioning.checkpoint import load_captioner, read_captioner_manifest
    from mvclam.engine.training.tasks import Stage2Task

    stage1 = make_task().module
    stage1.save_pretrained(tmp_path / "stage1")
    task = Stage2Task.from_checkpoint(tmp_path / "stage1")
    frozen = {n: p.detach().clone() for n, p in task.mvclam.named_parameters()}
    before = {n: p.detach().clone() for n, p in task.module.named_parameters() if p.requires_grad}
    result = train_loop(
        config(tmp_path / "stage2", stage="stage2", epochs=1, batch_size=4, eval_every=2, eval_batches=1),
        task=task,
        data=toy_data,
    )
    assert result.state.step == 2 and result.final_checkpoint is not None
    changed = [
        n for n, p in task.module.named_parameters() if p.requires_grad and not torch.equal(p, before[n])
    ]
    assert any("projector" in n for n in changed) and any("lora_" in n for n in changed)
    assert all(torch.equal(p, frozen[n]) for n, p in task.mvclam.named_parameters())  # stage 1 stays frozen
    assert read_captioner_manifest(result.final_checkpoint)["trained"] is True
    reloaded = load_captioner(result.final_checkpoint)
    for name, tensor in reloaded.state_dict().items():
        if "lora_" in name or name.startswith("projector."):
            assert torch.equal(tensor, task.module.state_dict()[name]), name
    assert MVCLAM.from_pretrained(result.final_checkpoint).model_version == stage1.model_version


def test_stage2_with_references_trains_and_keeps_its_reference_set(tmp_path, toy_data):
    """Retrieval-augmented stage 2: prompts cite the training split's other molecules; the saved
    captioner carries that set and cites it when loaded, never a molecule's own description."""
    from mvclam.engine.captioning import GenerationSettings, load_captioning
    from mvclam.engine.captioning.references import REFERENCES_FILE
    from mvclam.engine.training.tasks import Stage2Task

    stage1 = make_task().module
    stage1.save_pretrained(tmp_path / "stage1")
    options = {"smiles_chars": 24, "references": 2, "reference_tokens": 6}
    task = Stage2Task.from_checkpoint(tmp_path / "stage1", options)
    result = train_loop(
        config(tmp_path / "stage2", stage="stage2", epochs=1, batch_size=4, eval_every=2, eval_batches=1),
        task=task,
        data=toy_data,
    )
    assert result.state.step == 2 and task.references is not None and len(task.references) == len(SMILES)
    assert (result.final_checkpoint / "captioner" / REFERENCES_FILE).is_file()
    captioning = load_captioning(result.final_checkpoint, batch_size=4)
    assert captioning.references is not None and captioning.references.version == task.references.version
    views = toy_data[0].views[:3]
    described_views = captioning.describe_views(views, GenerationSettings(max_new_tokens=2))
    for view, described in zip(views, described_views, strict=True):
        assert len(described.references) == 2
        assert view.inchikey not in {
            captioning.references.inchikeys[captioning.references.ids.index(r.id)]
            for r in described.references
        }
