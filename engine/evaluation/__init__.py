"""Evaluation: retrieval (MolCA / Text2Mol protocols) and captioning (MolT5 / MolCA metrics),
with random, text-fingerprint and nearest-neighbour baselines. See jobs/evaluate.py for the CLI."""

from mvclam.engine.evaluation.captioning import CaptionFn, caption_metrics, scibert_tokens
from mvclam.engine.evaluation.eval_set import EvalSet, load_eval_set
from mvclam.engine.evaluation.retrieval import (
    expected_random_metrics,
    molecule_to_text_ranks,
    rerank_top,
    retrieval_metrics,
    summarize_ranks,
    text_to_molecule_ranks,
)

__all__ = [
    "CaptionFn",
    "EvalSet",
    "caption_metrics",
    "expected_random_metrics",
    "load_eval_set",
    "molecule_to_text_ranks",
    "rerank_top",
    "retrieval_metrics",
    "scibert_tokens",
    "summarize_ranks",
    "text_to_molecule_ranks",
]
