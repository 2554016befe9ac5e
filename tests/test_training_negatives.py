"""Stage-1 levers: size-bucketed batches, a frozen cached text tower, extra negatives, best checkpoint."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from test_models import tiny_config
from test_training import config, toy_pairs

from mvclam.engine import losses
from mvclam.engine.models import MVCLAM
from mvclam.engine.training import train_loop
from mvclam.engine.training.loop import epoch_batches
from mvclam.engine.training.tasks import Stage1Task
from mvclam.engine.training.text_cache import MoleculeQueue, TextStateCache, freeze_text_tower


@pytest.fixture(scope="module")
def toy_data():
    return toy_pairs()


def test_bucketed_batches_cover_every_row_once_and_group_by_size():
    lengths = np.random.default_rng(0).integers(1, 200, size=400)
    plain = epoch_batches(400, 8, seed=3, epoch=0, rank=0, world=1)
    bucketed = epoch_batches(400, 8, seed=3, epoch=0, rank=0, world=1, lengths=lengths, bucket_batches=10)
    assert sorted(np.concatenate(bucketed).tolist()) == list(range(400))

    def padding(batches):  # padded atoms per epoch: what bucketing is for
        return sum(int(lengths[b].max()) * len(b) - int(lengths[b].sum()) for b in batches)

    assert padding(bucketed) < 0.3 * padding(plain)
    assert epoch_batches(400, 8, 3, 1, 0, 1, lengths)[0].tolist() != bucketed[0].tolist()


def test_extra_negatives_enter_the_denominator_and_own_molecule_is_masked():
    torch.manual_seed(0)
    tokens = torch.nn.functional.normalize(torch.randn(4, 3, 8), dim=-1)
    texts = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    groups = torch.arange(4)
    base = losses.token_contrastive_loss(tokens, texts, 10.0, groups)
    extra_texts = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    harder = losses.token_contrastive_loss(
        tokens, texts, 10.0, groups, extra_texts=extra_texts, extra_text_groups=torch.full((5,), 99)
    )
    assert harder > base  # more candidates: a larger denominator
    # Extra candidates of the query's own molecule are positives, never negatives: masked out.
    own = losses.token_contrastive_loss(
        tokens[:1],
        texts[:1],
        10.0,
        groups[:1],
        extra_texts=extra_texts,
        extra_text_groups=torch.zeros(5, dtype=torch.long),
    )
    torch.testing.assert_close(own, losses.token_contrastive_loss(tokens[:1], texts[:1], 10.0, groups[:1]))
    queued = losses.token_contrastive_loss(
        tokens, texts, 10.0, groups, extra_molecules=tokens[:2], extra_molecule_groups=torch.tensor([7, 8])
    )
    assert queued > base
    # A queued copy of the query's own molecule (same group) is masked, not a negative.
    own_queued = losses.token_contrastive_loss(
        tokens[:1], texts[:1], 10.0, groups[:1], extra_molecules=tokens[:1], extra_molecule_groups=groups[:1]
    )
    torch.testing.assert_close(
        own_queued, losses.token_contrastive_loss(tokens[:1], texts[:1], 10.0, groups[:1])
    )


def test_molecule_queue_keeps_the_newest_rows():
    queue = MoleculeQueue(5)
    for step in range(3):
        queue.push(torch.full((2, 1, 1), float(step)), torch.tensor([step, step]))
    assert queue.tokens is not None and queue.groups is not None
    assert queue.groups.tolist() == [2, 2, 1, 1, 0]
    assert not queue.tokens.requires_grad


def test_frozen_text_tower_keeps_query_path_trainable_and_cache_matches_live_states(tmp_path):
    torch.manual_seed(0)
    model = MVCLAM(tiny_config())
    frozen = set(freeze_text_tower(model))
    assert any(".attention." in name for name in frozen)
    assert not any(".crossattention." in name or "_query" in name for name in frozen)
    assert "qformer.query_tokens" not in frozen and "text_projection.weight" not in frozen
    texts = ["a primary alcohol", "a purine alkaloid stimulant", "a primary alcohol"]
    cache = TextStateCache.build(model, texts, tmp_path, batch_size=2, log=lambda _: None)
    assert len(cache.texts) == 2  # distinct texts only
    model.eval()
    with torch.no_grad():
        live = model.text_cls_states(*model.tokenize(texts))
    torch.testing.assert_close(cache.lookup(texts), live, atol=1e-5, rtol=1e-5)
    reread = TextStateCache.build(model, texts, tmp_path, log=lambda _: None)
    torch.testing.assert_close(reread.states, cache.states)


def test_frozen_text_training_moves_no_text_weight_and_keeps_best(tmp_path, toy_data):
    torch.manual_seed(0)
    model = MVCLAM(tiny_config())
    model.config.loss.matching_weight = model.config.loss.captioning_weight = 0
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    task = Stage1Task(model, text_tower="frozen", text_negatives=-1, molecule_queue=8)
    result = train_loop(
        config(tmp_path, retrieval_eval_every=3, bucket_by_size=True), task=task, data=toy_data
    )
    assert result.state.step == 6
    after = dict(model.named_parameters())
    moved = {n for n in before if not torch.equal(before[n], after[n].detach())}
    assert "qformer.layer.0.attention.self.query.weight" not in moved
    assert "qformer.embeddings.word_embeddings.weight" not in moved
    assert {"qformer.query_tokens", "text_projection.weight"} <= moved
    assert (tmp_path / "checkpoints" / "best" / "model.safetensors").is_file()
    assert result.state.extra["best_step"] in (3, 6)
    with open(tmp_path / "metrics.csv") as handle:
        mrr = [float(r["t2m_mrr"]) for r in csv.DictReader(handle) if r["t2m_mrr"]]
    assert len(mrr) == 2 and all(0 < v <= 1 for v in mrr)


def test_text_negatives_need_a_frozen_text_tower():
    with pytest.raises(ValueError, match="frozen"):
        Stage1Task(MVCLAM(tiny_config()), text_tower="train", text_negatives=16)
