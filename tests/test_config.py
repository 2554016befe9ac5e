"""Named configs, overrides and parameter counts."""

from __future__ import annotations

import pytest

from mvclam.engine.models import MVCLAM, MVCLAMConfig, load_config


def test_small_and_paper_configs_load():
    small = load_config("small")
    paper = load_config("paper")
    assert small.qformer.hidden_size == 384 and small.qformer.num_query_tokens == 16
    assert small.num_molecule_tokens == 32 and small.embedding_dim == 256
    assert paper.qformer.hidden_size == 768 and paper.qformer.num_layers == 12
    assert paper.qformer.num_query_tokens == 12
    assert paper.encoder_2d.hidden_size == 1024 and paper.encoder_3d.hidden_size == 512
    assert small.views.max_atoms == 256 and not small.views.mmff_relax


def test_overrides_and_round_trip_through_dict():
    config = load_config(
        "small", ["qformer.num_query_tokens=8", "views.mmff_relax=true", "loss.temperature=0.1"]
    )
    assert config.qformer.num_query_tokens == 8 and config.views.mmff_relax and config.loss.temperature == 0.1
    assert MVCLAMConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["qformer.nope=1"], "unknown keys in config section 'qformer'"),
        (["bogus=1"], "unknown config keys"),
        (["qformer.num_layers"], "section.key=value"),
    ],
)
def test_bad_overrides_are_rejected(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_config("small", overrides)


def test_unknown_config_name():
    with pytest.raises(FileNotFoundError, match="available"):
        load_config("enormous")


def test_minilm_init_requires_minilm_sizes():
    with pytest.raises(ValueError, match="MiniLM sizes"):
        MVCLAM(load_config("small", ["qformer.hidden_size=768"]))


def test_parameter_counts_of_small_and_paper():
    small = MVCLAM(load_config("small"), load_pretrained=False).parameter_counts()
    paper = MVCLAM(load_config("paper"), load_pretrained=False).parameter_counts()
    assert 25e6 < small["total"] < 60e6
    assert small["trainable"] == small["total"] - 30522 * 384  # frozen MiniLM word embeddings
    assert paper["total"] > 3 * small["total"]
    assert paper["trainable"] == paper["total"]


def test_scibert_tokenizer_of_the_paper_config_is_complete():
    from mvclam.engine.models.pretrained import load_tokenizer

    tokenizer = load_tokenizer("scibert")
    assert len(tokenizer) == 31090
    assert tokenizer.tokenize("a beta-lactam antibiotic") == ["a", "beta", "-", "lact", "##am", "antibiotic"]


def test_config_base_is_read_first_and_sections_merge(tmp_path):
    from mvclam.engine.config_io import read_config

    (tmp_path / "root.yaml").write_text("a: 1\nb: 2\nsection: {x: 1, y: 2}\n")
    (tmp_path / "mid.yaml").write_text("base: root.yaml\nb: 3\nsection: {y: 5}\n")
    (tmp_path / "leaf.yaml").write_text("base: mid.yaml\nc: 4\n")
    assert read_config(tmp_path / "leaf.yaml", ["a=9"]) == {
        "a": 9,
        "b": 3,
        "c": 4,
        "section": {"x": 1, "y": 5},
    }
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ValueError, match="cycle"):
        read_config(tmp_path / "loop.yaml")


def test_past_run_training_configs_are_overrides_of_the_base_recipe():
    from mvclam.engine.training import TrainConfig

    joint = TrainConfig.load("stage1", "train_stage1_cpu_joint")
    assert (joint.learning_rate, joint.epochs, joint.batch_size) == (2e-4, 4, 32)  # own keys, then the base's
    assert joint.grad_clip == TrainConfig.load("stage1", "train_stage1_cpu").grad_clip
