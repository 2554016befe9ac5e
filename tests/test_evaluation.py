"""Evaluation: retrieval and captioning metrics on hand-made cases, baselines, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_models import tiny_config

from mvclam.engine.data import prepare_pairs
from mvclam.engine.evaluation import (
    caption_metrics,
    expected_random_metrics,
    load_eval_set,
    molecule_to_text_ranks,
    rerank_top,
    retrieval_metrics,
    scibert_tokens,
    summarize_ranks,
    text_to_molecule_ranks,
)
from mvclam.engine.evaluation import captioning as captioning_module
from mvclam.engine.evaluation.baselines import TextFingerprintRidge, nearest_neighbour_captions
from mvclam.engine.evaluation.report import load_train_data, random_baseline, retrieval_report
from mvclam.engine.evaluation.wordnet import wordnet_status
from mvclam.engine.models import MVCLAM
from mvclam.jobs.evaluate import main as evaluate_main


def test_perfect_reversed_and_constant_rankings():
    truth = np.arange(4)
    perfect = np.eye(4)
    assert summarize_ranks(text_to_molecule_ranks(perfect, truth))["mrr"] == 1.0
    assert summarize_ranks(molecule_to_text_ranks(perfect, truth))["hits@1"] == 1.0
    reversed_scores = -np.eye(4)  # the true molecule is always last of 4
    assert text_to_molecule_ranks(reversed_scores, truth).tolist() == [4, 4, 4, 4]
    assert summarize_ranks(text_to_molecule_ranks(reversed_scores, truth))["mrr"] == pytest.approx(0.25)
    # Ties count against the query: a constant scorer is as bad as the reversed one.
    assert text_to_molecule_ranks(np.zeros((4, 4)), truth).tolist() == [4, 4, 4, 4]
    same_order = np.tile(np.arange(4.0), (4, 1))  # every text ranks the molecules 3, 2, 1, 0
    assert text_to_molecule_ranks(same_order, truth).tolist() == [4, 3, 2, 1]
    assert summarize_ranks(text_to_molecule_ranks(same_order, truth))["mrr"] == pytest.approx(25 / 48)
    stats = summarize_ranks(np.array([1, 2, 4, 40]), ks=(1, 10))
    assert stats["mrr"] == pytest.approx((1 + 0.5 + 0.25 + 0.025) / 4)
    assert stats["hits@1"] == 0.25 and stats["hits@10"] == 0.75


def test_molecule_to_text_counts_duplicates_once():
    # texts 0 and 1 describe molecule 0, text 2 molecule 1.
    truth = np.array([0, 0, 1])
    scores = np.array([[0.1, 0.9], [0.8, 0.0], [0.5, 0.2]])
    # molecule 0: own texts score 0.1 / 0.8, the other molecule's text 0.5 -> best own first.
    # molecule 1: own text 0.2, texts 0 and 1 (0.9, 0.0) -> one mistake ahead, rank 2.
    assert molecule_to_text_ranks(scores, truth).tolist() == [1, 2]
    # text 0: molecule 1 (0.9) beats the true 0.1; text 2: molecule 0 (0.5) beats 0.2.
    assert text_to_molecule_ranks(scores, truth).tolist() == [2, 1, 2]


def test_expected_random_metrics_known_values():
    ten = expected_random_metrics([10], [1])
    assert ten["mrr"] == pytest.approx(sum(1 / r for r in range(1, 11)) / 10)
    assert ten["hits@1"] == pytest.approx(0.1) and ten["hits@10"] == 1.0
    # 2 positives among 4: P(best rank 1) = 1/2, rank 2 = 1/3, rank 3 = 1/6.
    two = expected_random_metrics([4], [2], ks=(1,))
    assert two["mrr"] == pytest.approx(0.5 + (1 / 3) / 2 + (1 / 6) / 3)
    assert two["hits@1"] == pytest.approx(0.5)


def test_rerank_moves_the_matching_candidate_up():
    scores = np.array([[0.9, 0.8, 0.7, 0.1]])
    truth = np.array([2])

    def probability(rows, cols):
        return (cols == 2).astype(float)  # the head knows the answer

    assert text_to_molecule_ranks(scores[:, [0, 1, 2, 3]], truth).tolist() == [3]
    assert text_to_molecule_ranks(rerank_top(scores, 3, probability), truth).tolist() == [1]
    assert text_to_molecule_ranks(rerank_top(scores, 2, probability), truth).tolist() == [3]  # outside top-2


def test_in_batch_equals_full_set_with_one_batch():
    rng = np.random.default_rng(0)
    truth = np.array([0, 1, 1, 2, 3, 4, 5, 5, 6, 7])
    scores = rng.normal(size=(len(truth), 8))
    result = retrieval_metrics(scores, truth, batch_size=64)
    for direction in ("text_to_molecule", "molecule_to_text"):
        assert result[direction]["in_batch_accuracy"] == result[direction]["accuracy"]
        assert result[direction]["in_batch_recall@20"] == result[direction]["recall@20"] == 1.0
    small = retrieval_metrics(scores, truth, batch_size=3)
    assert small["text_to_molecule"]["in_batch_accuracy"] >= result["text_to_molecule"]["accuracy"] - 1e-12


def test_scibert_tokens_use_the_real_vocabulary():
    tokens = scibert_tokens("The molecule is 2-acetoxybenzoic acid [SEP]")
    assert tokens[:3] == ["the", "molecule", "is"] and "[UNK]" not in tokens and "[SEP]" not in tokens


def test_caption_metrics_known_values():
    same = caption_metrics(
        ["The molecule is a kinase inhibitor."] * 2, ["The molecule is a kinase inhibitor."] * 2
    )
    assert same["bleu2"] == pytest.approx(1.0) and same["bleu4"] == pytest.approx(1.0)
    assert same["rouge1"] == same["rouge2"] == same["rougeL"] == pytest.approx(1.0)
    # Hand-computed: unigram precision 5/6, bigram 3/5, equal lengths -> BLEU-2 = sqrt(1/2).
    one = caption_metrics(["the cat sat on the mat"], ["the cat sat on a mat"])
    assert one["bleu2"] == pytest.approx(0.5**0.5)
    assert one["rouge1"] == pytest.approx(5 / 6)
    with pytest.raises(ValueError):
        caption_metrics(["a"], [])


def test_meteor_known_nltk_value():
    available, reason = wordnet_status()
    if not available:
        pytest.skip(f"no offline WordNet: {reason}")
    from nltk.translate.meteor_score import meteor_score

    from mvclam.engine.evaluation.wordnet import load_wordnet

    hypothesis = (
        "It is a guide to action which ensures that the military always obeys the commands of the party"
    )
    reference = "It is a guide to action that ensures that the military will forever heed Party commands"
    value = meteor_score([reference.split()], hypothesis.split(), wordnet=load_wordnet())
    assert round(value, 4) == 0.6944  # nltk's documented example
    # The WordNet stage matches synonyms (auto / car share a synset; nltk looks up stemmed words).
    reference = [["the", "car", "is", "red"]]
    synonym = meteor_score(reference, ["the", "auto", "is", "red"], wordnet=load_wordnet())
    assert synonym > meteor_score(reference, ["the", "banana", "is", "red"], wordnet=load_wordnet()) + 0.1


def test_meteor_is_null_with_a_reason_without_wordnet(monkeypatch):
    import mvclam.engine.evaluation.wordnet as wordnet

    monkeypatch.setattr(wordnet, "wordnet_status", lambda: (False, "no database"))
    result = captioning_module.caption_metrics(["a cat"], ["a cat"])
    assert result["meteor"] is None and result["meteor_note"] == "not available: no database"


def test_text_fingerprint_baseline_learns_something():
    smiles = ["CCO", "CCCO", "CCCCO", "c1ccccc1", "Cc1ccccc1", "CCc1ccccc1", "CC(=O)O", "CCC(=O)O"] * 3
    words = ["alcohol hydroxy"] * 3 + ["aromatic benzene ring"] * 3 + ["carboxylic acid"] * 2
    texts = [f"{w} molecule {i % 3}" for i, w in enumerate(words * 3)]
    ridge = TextFingerprintRidge.fit(texts, smiles, alpha=0.1)
    scores = ridge.scores(
        ["an alcohol", "a benzene ring", "an acid"], ["CCCCCO", "CCCc1ccccc1", "CCCCC(=O)O"]
    )
    assert scores.argmax(axis=1).tolist() == [0, 1, 2]
    captions = nearest_neighbour_captions(
        ["CCCCCO", "c1ccccc1C"], ["CCO", "Cc1ccccc1"], ["an alcohol", "toluene"]
    )
    assert captions == ["an alcohol", "toluene"]


SMILES = [
    "C", "CC", "CCC", "CCCC", "CCO", "CCCO", "CC(=O)O", "CCC(=O)O", "c1ccccc1", "Cc1ccccc1",
    "Oc1ccccc1", "Nc1ccccc1", "C1CCCCC1", "C1CCNCC1", "CCN", "CCCN", "CC(C)O", "OCCO", "ClCCl", "CC=O",
]  # fmt: skip


@pytest.fixture(scope="module")
def pair_files(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("eval")
    rows = [f"{i}\t{s}\tmolecule number {i} with {len(s)} characters" for i, s in enumerate(SMILES)]
    rows += ["100\tOCC\tethanol again, another description", "101\tC[Pt]C\tplatinum", "102\tbad"]
    independent = root / "independent_set.tsv"
    independent.write_text("cid\tsmiles\tdescription\n" + "\n".join(rows) + "\n")
    train_rows = ["1\tCCCCCC\thexane", "2\tc1ccc2ccccc2c1\tnaphthalene", "3\tCCCCO\tbutanol, an alcohol"]
    train = root / "train_set.tsv"
    train.write_text("cid\tsmiles\tdescription\n" + "\n".join(train_rows) + "\n")
    return independent, train


def test_retrieval_end_to_end_with_a_tiny_model(pair_files, tmp_path):
    independent, train = pair_files
    eval_set = load_eval_set([independent], "all")
    assert len(eval_set.data) == 21 and len(eval_set.molecule_keys) == 20  # ethanol twice
    assert eval_set.errors == {"unsupported_element": 1, "malformed_line": 1}
    torch.manual_seed(0)
    model = MVCLAM(tiny_config()).eval()
    train_data = load_train_data([train], exclude=set(eval_set.molecule_keys))
    # split_of decides which of the 3 train rows are in the train split; at least one must be.
    report = retrieval_report(eval_set, model, None, train_data, rerank_k=5)
    json.dumps(report)  # serialisable
    results = report["results"]
    assert set(results["model"]) == {
        "text_to_molecule",
        "molecule_to_text",
        "text_to_molecule_reranked",
        "molecule_to_text_reranked",
    }
    for metrics in results["model"].values():
        assert 0 < metrics["mrr"] <= 1 and 0 <= metrics["hits@1"] <= metrics["hits@10"] <= 1
    assert results["model"]["text_to_molecule"]["queries"] == 21
    assert results["model"]["molecule_to_text"]["queries"] == 20
    assert results["random"] == random_baseline(eval_set)
    assert results["random"]["text_to_molecule"]["hits@1"] == pytest.approx(1 / 20)
    assert results["random"]["text_to_molecule"]["hits@10"] == pytest.approx(10 / 20)
    assert report["data"]["pairs"] == 21 and report["model"]["model_version"] == "untrained"


def test_cli_scores_given_captions_and_refuses_partial_predictions(pair_files, tmp_path):
    independent, train = pair_files
    predictions = tmp_path / "pred.tsv"
    lines = [f"{i}\tmolecule number {i} with {len(s)} characters" for i, s in enumerate(SMILES)]
    predictions.write_text("cid\tcaption\n" + "\n".join(lines) + "\n")
    out = tmp_path / "report.json"
    argv = ["evaluate", "captioning", "--pairs", str(independent), "--predictions", str(predictions)]
    assert evaluate_main([*argv, "--out", str(out), "--train-data", str(train)]) == 0
    report = json.loads(out.read_text())
    assert report["data"]["split"] == "all"  # not a training source
    model = report["results"]["model"]
    assert model["count"] == 21
    # 20 rows are exact; ethanol's second description is scored against the first caption.
    assert 0.9 < model["bleu4"] < 1.0 and model["rougeL"] > 0.9
    predictions.write_text("cid\tcaption\n" + "\n".join(lines[:5]) + "\n")
    with pytest.raises(SystemExit, match="no prediction"):
        evaluate_main([*argv, "--out", str(out), "--no-baselines"])


def test_cli_split_auto_restricts_training_sources(tmp_path):
    from mvclam.jobs.evaluate import resolve_split

    assert resolve_split("auto", ["x/chebi20_validation.tsv"], None) == "test"
    assert resolve_split("auto", ["x/new_benchmark.tsv"], None) == "all"
    assert resolve_split("validation", ["x/chebi20_validation.tsv"], None) == "validation"
    with pytest.raises(SystemExit):
        resolve_split("auto", ["x/chebi20_validation.tsv", "x/new_benchmark.tsv"], None)


def test_prepared_cache_is_reused_for_evaluation(pair_files, tmp_path):
    independent, _ = pair_files
    prepare_pairs([independent], tmp_path / "prep", workers=1, log=lambda m: None)
    cached = load_eval_set([independent], "all", prepared=tmp_path / "prep")
    computed = load_eval_set([independent], "all")
    assert cached.views_from.startswith("cache") and computed.views_from == "computed"
    assert cached.molecule_keys == computed.molecule_keys and cached.texts == computed.texts
