"""Captioning metrics computed as MolT5 (text_translation_metrics.py) and MolCA do.

* Tokens: SciBERT uncased WordPiece (`load_tokenizer("scibert")`), at most 512 tokens per text,
  [PAD]/[CLS]/[SEP] removed.
* BLEU-2 / BLEU-4: nltk `corpus_bleu` with one reference per prediction, weights (.5, .5) and
  (.25, .25, .25, .25), no smoothing.
* ROUGE-1/2/L: `rouge_score.RougeScorer(["rouge1", "rouge2", "rougeL"])` on the raw strings
  (its own tokeniser, no stemming, as MolT5), mean F-measure.
* METEOR: mean of nltk `meteor_score([reference_tokens], prediction_tokens)` with an offline
  WordNet 3.0 (see wordnet.py); reported as null with the reason when WordNet is unavailable.

Scores are fractions in [0, 1] (MolT5's tables print the same numbers).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from functools import cache

from mvclam.engine.views import MoleculeViews

# The captioning interface: one caption per molecule, in order.
CaptionFn = Callable[[list[MoleculeViews]], list[str]]

MAX_TOKENS = 512
_SPECIAL = frozenset({"[PAD]", "[CLS]", "[SEP]"})


@cache
def _tokenizer():
    """SciBERT's WordPiece tokenizer (load_tokenizer checks that it holds the whole vocabulary)."""
    from mvclam.engine.models.pretrained import load_tokenizer

    return load_tokenizer("scibert")


def scibert_tokens(text: str) -> list[str]:
    return [t for t in _tokenizer().tokenize(text)[:MAX_TOKENS] if t not in _SPECIAL]


def caption_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, object]:
    """BLEU-2/4, ROUGE-1/2/L, METEOR (or null + reason) of row-aligned predictions and references."""
    from nltk.translate.bleu_score import corpus_bleu
    from rouge_score import rouge_scorer

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not references:
        raise ValueError("no captions to score")
    predicted = [scibert_tokens(p or "") for p in predictions]
    referenced = [[scibert_tokens(r)] for r in references]
    with warnings.catch_warnings():
        # nltk warns when BLEU is 0 for lack of n-gram overlaps: expected for poor captions.
        warnings.filterwarnings("ignore", message=r"\s*The hypothesis contains 0 counts")
        out: dict[str, object] = {
            "bleu2": float(corpus_bleu(referenced, predicted, weights=(0.5, 0.5))),
            "bleu4": float(corpus_bleu(referenced, predicted, weights=(0.25, 0.25, 0.25, 0.25))),
        }
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
    rouge = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for prediction, reference in zip(predictions, references, strict=True):
        scores = scorer.score(reference, prediction or "")
        for key in rouge:
            rouge[key] += scores[key].fmeasure
    out.update({key: value / len(references) for key, value in rouge.items()})
    out["meteor"], out["meteor_note"] = _meteor(predicted, referenced)
    out["count"] = len(references)
    return out


def _meteor(predicted: list[list[str]], referenced: list[list[list[str]]]) -> tuple[float | None, str]:
    from nltk.translate.meteor_score import meteor_score

    from mvclam.engine.evaluation.wordnet import wordnet_status

    available, note = wordnet_status()
    if not available:
        return None, f"not available: {note}"
    from mvclam.engine.evaluation.wordnet import load_wordnet

    wordnet = load_wordnet()
    values = [
        meteor_score(refs, pred, wordnet=wordnet) for refs, pred in zip(referenced, predicted, strict=True)
    ]
    return float(sum(values) / len(values)), f"nltk meteor_score, {note}"
