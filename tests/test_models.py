"""MV-CLAM model: shapes, masks, padding invariance, gradients, losses, MiniLM initialisation."""

from __future__ import annotations

import pytest
import torch
from transformers import BertModel

from mvclam.engine import losses
from mvclam.engine.models import MVCLAM, load_config
from mvclam.engine.models.mqformer import build_attention_mask
from mvclam.engine.models.pretrained import minilm_dir
from mvclam.engine.views import collate_views, compute_views

SMILES = [
    "CC(=O)Oc1ccccc1C(=O)O",  # aspirin
    "C",  # methane: a single heavy atom
    "CC1([C@@H](N2[C@H](S1)[C@@H](C2=O)NC(=O)Cc3ccccc3)C(=O)O)C",  # penicillin G
    "[NH3+]CC(=O)[O-]",  # zwitterion
]
TEXTS = [
    "an acetate ester that is salicylic acid acetylated at the phenolic hydroxy group",
    "the simplest alkane",
    "a penicillin antibiotic",
    "an amino acid zwitterion",
]


def tiny_config(**overrides: object):
    """A randomly initialised, fast config with the real MiniLM tokenizer."""
    items = [
        "qformer.init=none",
        "qformer.hidden_size=64",
        "qformer.num_layers=2",
        "qformer.num_heads=4",
        "qformer.intermediate_size=128",
        "qformer.num_query_tokens=4",
        "qformer.dropout=0.0",
        "encoder_2d.hidden_size=32",
        "encoder_2d.num_layers=2",
        "encoder_2d.num_heads=4",
        "encoder_2d.ffn_size=64",
        "encoder_2d.dropout=0.0",
        "encoder_3d.hidden_size=32",
        "encoder_3d.num_layers=2",
        "encoder_3d.num_heads=4",
        "encoder_3d.ffn_size=64",
        "encoder_3d.num_gaussians=16",
        "encoder_3d.dropout=0.0",
        "embedding_dim=48",
        "max_text_length=32",
    ]
    items += [f"{k}={v}" for k, v in overrides.items()]
    return load_config("small", items)


@pytest.fixture(scope="module")
def views():
    return [compute_views(s) for s in SMILES]


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return MVCLAM(load_config("small")).eval()


@pytest.fixture()
def tiny_model():
    torch.manual_seed(0)
    return MVCLAM(tiny_config())


def test_embedding_shapes_and_norms(small_model, views):
    batch = collate_views(views)
    with torch.no_grad():
        out = small_model.embed_molecules(batch)
        text = small_model.embed_texts(TEXTS)
    config = small_model.config
    assert out.tokens.shape == (len(views), 2 * config.qformer.num_query_tokens, config.embedding_dim)
    assert out.pooled.shape == (len(views), config.embedding_dim)
    assert text.shape == (len(TEXTS), config.embedding_dim)
    for tensor in (out.tokens, out.pooled, text):
        assert torch.allclose(tensor.norm(dim=-1), torch.ones(tensor.shape[:-1]), atol=1e-5)
    scores = small_model.score(text, out.tokens)
    expected = torch.einsum("td,mkd->tmk", text, out.tokens).amax(-1)
    assert torch.allclose(scores, expected, atol=1e-6)


def test_float16_tokens(small_model, views):
    with torch.no_grad():
        out = small_model.embed_molecules(collate_views(views[:2]), out_dtype=torch.float16)
    assert out.tokens.dtype == torch.float16
    assert torch.allclose(out.tokens.float().norm(dim=-1), torch.ones(2, out.tokens.shape[1]), atol=2e-3)


def test_padding_invariance_molecules(small_model, views):
    """A molecule embedded alone equals the same molecule inside a padded batch (and batch order is irrelevant)."""
    with torch.no_grad():
        alone = [small_model.embed_molecules(collate_views([v])).tokens[0] for v in views]
        batched = small_model.embed_molecules(collate_views(views, pad_to=40)).tokens
        reversed_batch = small_model.embed_molecules(collate_views(views[::-1])).tokens.flip(0)
    for i, single in enumerate(alone):
        assert torch.allclose(single, batched[i], atol=2e-5), f"row {i} changed with padding"
        assert torch.allclose(single, reversed_batch[i], atol=2e-5)


def test_padding_invariance_texts(small_model):
    with torch.no_grad():
        alone = torch.cat([small_model.embed_texts([t]) for t in TEXTS])
        batched = small_model.embed_texts(TEXTS)
    assert torch.allclose(alone, batched, atol=2e-5)


def test_eval_mode_is_deterministic(small_model, views):
    batch = collate_views(views)
    with torch.no_grad():
        first = small_model.embed_molecules(batch).tokens
        second = small_model.embed_molecules(batch).tokens
    assert torch.equal(first, second)


def test_text_branch_reproduces_minilm(small_model):
    """In text mode the MQ-Former is exactly BERT: it must match transformers' BertModel on MiniLM's weights."""
    reference = BertModel.from_pretrained(str(minilm_dir()), local_files_only=True).eval()
    ids, mask = small_model.tokenize(TEXTS)
    with torch.no_grad():
        _, ours = small_model.qformer("text", text_ids=ids, text_mask=mask)
        theirs = reference(input_ids=ids, attention_mask=mask).last_hidden_state
    valid = mask.bool()
    assert torch.allclose(ours[valid], theirs[valid], atol=1e-4)


def test_query_ffn_starts_as_copy_of_text_ffn(small_model):
    layer = small_model.qformer.layer[0]
    assert torch.equal(layer.intermediate.dense.weight, layer.intermediate_query.dense.weight)
    assert layer.intermediate.dense.weight.data_ptr() != layer.intermediate_query.dense.weight.data_ptr()
    assert [lay.crossattention is not None for lay in small_model.qformer.layer] == [True, False] * 3


def test_attention_masks():
    text_mask = torch.tensor([[1, 1, 1, 0]])
    k = 2
    molecule = build_attention_mask("molecule", 1, 2, k, None, torch.device("cpu"))[0]
    assert molecule.shape == (4, 4)
    assert molecule[:2, :2].all() and not molecule[:2, 2:].any()  # view 0 queries never see view 1
    caption = build_attention_mask("caption", 1, 2, k, text_mask, torch.device("cpu"))[0]
    text_rows = caption[4:]
    assert text_rows[:, :4].all()  # text sees every query
    assert not caption[:4, 4:].any()  # queries never see the text they decode
    assert text_rows[0, 4:].tolist() == [True, False, False, False]  # causal
    assert text_rows[2, 4:].tolist() == [True, True, True, False]
    match = build_attention_mask("match", 1, 2, k, text_mask, torch.device("cpu"))[0]
    assert match[:4, 4:].tolist() == [[True, True, True, False]] * 4  # queries see valid text only
    with pytest.raises(ValueError, match="unknown mode"):
        build_attention_mask("nope", 1, 2, k, None, torch.device("cpu"))


def test_caption_logits_are_causal(tiny_model, views):
    tiny_model.eval()
    states, masks = tiny_model.encode_views(collate_views(views[:1]))
    ids, mask = tiny_model.tokenize(["a penicillin antibiotic used against infections"])
    changed = ids.clone()
    changed[0, -2] = tiny_model.tokenizer.convert_tokens_to_ids("benzene")
    with torch.no_grad():
        a = tiny_model.caption_logits(states, masks, ids, mask)
        b = tiny_model.caption_logits(states, masks, changed, mask)
    assert torch.allclose(a[:, :-2], b[:, :-2], atol=1e-6)
    assert not torch.allclose(a[:, -2:], b[:, -2:])


def test_gradients_reach_every_trainable_part(tiny_model, views):
    tiny_model.train()
    ids, mask = tiny_model.tokenize(TEXTS)
    out = tiny_model(collate_views(views), ids, mask, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss) and out.matching > 0 and out.captioning > 0
    out.loss.backward()
    missing = [n for n, p in tiny_model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient for {missing[:10]}"
    groups = {
        "encoder_2d": "encoder_2d.",
        "encoder_3d": "encoder_3d.",
        "pair_bias": "encoder_3d.pair_bias.",
        "queries": "qformer.query_tokens",
        "self_attention": "qformer.layer.0.attention.",
        "cross_attention_2d": "qformer.layer.0.crossattention.0.",
        "cross_attention_3d": "qformer.layer.0.crossattention.1.",
        "query_ffn": "qformer.layer.1.intermediate_query.",
        "text_ffn": "qformer.layer.1.intermediate.",
        "molecule_projection": "molecule_projection.",
        "text_projection": "text_projection.",
        "matching_head": "matching_head.",
        "lm_head": "lm_head.",
        "temperature": "log_logit_scale",
    }
    for group, prefix in groups.items():
        norm = sum(
            p.grad.abs().sum()
            for n, p in tiny_model.named_parameters()
            if n.startswith(prefix) and p.grad is not None
        )
        assert norm > 0, f"zero gradient in {group}"
    assert tiny_model.qformer.embeddings.word_embeddings.weight.grad is None  # frozen by config


def test_loss_weights_switch_losses_off(views):
    torch.manual_seed(0)
    model = MVCLAM(tiny_config(**{"loss.matching_weight": 0, "loss.captioning_weight": 0}))
    ids, mask = model.tokenize(TEXTS)
    out = model(collate_views(views), ids, mask)
    assert out.matching == 0 and out.captioning == 0
    assert torch.allclose(out.loss, out.contrastive)


def test_matching_rows_subsample_the_matching_pairs(views, monkeypatch):
    torch.manual_seed(0)
    model = MVCLAM(tiny_config(**{"loss.matching_rows": 2, "loss.captioning_weight": 0}))
    seen = []
    original = model.match_logits

    def spy(states, masks, text_ids, text_mask):
        seen.append(len(text_ids))
        return original(states, masks, text_ids, text_mask)

    monkeypatch.setattr(model, "match_logits", spy)
    ids, mask = model.tokenize(TEXTS)
    out = model(collate_views(views), ids, mask, generator=torch.Generator().manual_seed(0))
    assert seen == [6]  # 2 positives + 2 negative molecules + 2 negative texts, not 3 x 4
    assert torch.isfinite(out.matching) and out.matching > 0


def test_environment_embedding_changes_the_2d_states(views):
    torch.manual_seed(0)
    with_env, without = MVCLAM(tiny_config()), MVCLAM(tiny_config(**{"encoder_2d.environment_buckets": 0}))
    assert (
        with_env.encoder_2d.environment_embedding is not None
        and without.encoder_2d.environment_embedding is None
    )
    batch = collate_views(views)
    with torch.no_grad():
        states = with_env.encoder_2d(batch)
        with_env.encoder_2d.environment_embedding.table.weight.zero_()
        assert not torch.allclose(states, with_env.encoder_2d(batch))


def test_contrastive_loss_prefers_aligned_pairs():
    torch.manual_seed(0)
    texts = torch.nn.functional.normalize(torch.randn(6, 16), dim=-1)
    tokens = torch.nn.functional.normalize(torch.randn(6, 4, 16), dim=-1)
    tokens[:, 2] = texts  # each molecule holds one token equal to its own text
    aligned = losses.token_contrastive_loss(tokens, texts, 10.0)
    shuffled = losses.token_contrastive_loss(tokens, texts[torch.tensor([1, 2, 3, 4, 5, 0])], 10.0)
    assert aligned < shuffled
    assert aligned < 0.5


def test_contrastive_loss_ignores_same_molecule_negatives():
    torch.manual_seed(0)
    texts = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    texts[1] = texts[0]
    tokens = texts[:, None, :].repeat(1, 2, 1)
    without_groups = losses.token_contrastive_loss(tokens, texts, 20.0)
    with_groups = losses.token_contrastive_loss(tokens, texts, 20.0, group_ids=torch.tensor([0, 0, 1]))
    assert with_groups < without_groups


def test_hard_negatives_never_pick_the_same_molecule():
    similarity = torch.randn(5, 5)
    groups = torch.tensor([0, 0, 1, 2, 3])
    for seed in range(20):
        neg_mol, neg_text = losses.sample_hard_negatives(
            similarity, groups, torch.Generator().manual_seed(seed)
        )
        assert (groups[neg_mol] != groups).all() and (groups[neg_text] != groups).all()
    neg_mol, neg_text = losses.sample_hard_negatives(torch.randn(2, 2), torch.tensor([7, 7]))
    assert neg_mol.tolist() == [-1, -1] and neg_text.tolist() == [-1, -1]


def test_matching_and_captioning_losses_prefer_truth():
    labels = torch.tensor([1, 0, 0])
    right = torch.tensor([[-3.0, 3.0], [3.0, -3.0], [3.0, -3.0]])
    assert losses.matching_loss(right, labels) < losses.matching_loss(right.flip(-1), labels)
    ids = torch.tensor([[5, 6, 7, 0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    logits = torch.full((1, 4, 10), -5.0)
    logits[0, 0, 6] = logits[0, 1, 7] = 5.0
    assert losses.captioning_loss(logits, ids, mask) < 0.01
    assert losses.captioning_loss(logits, ids.roll(1, dims=1), mask) > 5


def test_short_training_aligns_toy_batch(views):
    """A few optimiser steps on 4 pairs: the loss falls and aligned pairs beat shuffled ones."""
    torch.manual_seed(0)
    model = MVCLAM(tiny_config(**{"loss.matching_weight": 0, "loss.captioning_weight": 0}))
    batch = collate_views(views)
    ids, mask = model.tokenize(TEXTS)
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    first = None
    for _ in range(40):
        loss = model(batch, ids, mask).loss
        first = first if first is not None else loss.item()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    with torch.no_grad():
        molecules = model.embed_molecules(batch).tokens
        texts = model.embed_texts(TEXTS)
        aligned = losses.token_contrastive_loss(molecules, texts, model.logit_scale)
        shuffled = losses.token_contrastive_loss(molecules, texts.roll(1, dims=0), model.logit_scale)
    assert loss.item() < first * 0.6
    assert aligned < shuffled
