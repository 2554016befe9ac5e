"""Honest baselines reported next to the model.

* Random ranking: exact expected metrics (retrieval.expected_random_metrics), no sampling noise.
* Text–fingerprint ridge (retrieval): descriptions -> TF-IDF of word uni+bigrams (vocabulary of
  the TRAIN descriptions, top MAX_FEATURES terms by document frequency, min_df 2, sublinear tf,
  l2 rows); ridge regression (closed form) onto centred Morgan fingerprints (radius 2, 2048 bits)
  of the train molecules; a text and a molecule score by the cosine between the predicted and the
  actual centred fingerprint. Trained on the train split only.
* Nearest-neighbour captioning: the caption of a molecule is the (first) train description of
  the most Tanimoto-similar train molecule (Morgan radius 2, 2048 bits).
"""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from rdkit import DataStructs

from mvclam.engine.views.fingerprints import FP_BITS, FP_RADIUS, morgan_bitvects, morgan_matrix

MAX_FEATURES = 4096  # keeps the dense (rows x terms) matrix and the solve small on a laptop
RIDGE_ALPHA = 1.0
_WORD = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*")


def _terms(text: str) -> list[str]:
    words = _WORD.findall(text.lower())
    return words + [f"{a} {b}" for a, b in itertools.pairwise(words)]


@dataclass
class TfidfVectorizer:
    vocabulary: dict[str, int]
    idf: np.ndarray

    @classmethod
    def fit(cls, texts: Sequence[str], max_features: int = MAX_FEATURES, min_df: int = 2) -> TfidfVectorizer:
        df = Counter(term for text in texts for term in set(_terms(text)))
        kept = sorted((t for t, c in df.items() if c >= min_df), key=lambda t: (-df[t], t))[:max_features]
        vocabulary = {term: i for i, term in enumerate(kept)}
        n = len(texts)
        idf = np.array([math.log((1 + n) / (1 + df[t])) + 1.0 for t in kept], dtype=np.float32)
        return cls(vocabulary, idf)

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        matrix = np.zeros((len(texts), len(self.vocabulary)), dtype=np.float32)
        for row, text in enumerate(texts):
            for term, count in Counter(_terms(text)).items():
                column = self.vocabulary.get(term)
                if column is not None:
                    matrix[row, column] = 1.0 + math.log(count)
        matrix *= self.idf[None, :]
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        return matrix / np.maximum(norms, 1e-12)


@dataclass
class TextFingerprintRidge:
    vectorizer: TfidfVectorizer
    weights: np.ndarray  # (V, FP_BITS)
    fp_mean: np.ndarray  # (FP_BITS,)
    train_pairs: int

    @classmethod
    def fit(
        cls, descriptions: Sequence[str], smiles: Sequence[str], alpha: float = RIDGE_ALPHA
    ) -> TextFingerprintRidge:
        vectorizer = TfidfVectorizer.fit(descriptions)
        x = vectorizer.transform(descriptions)
        y = morgan_matrix(smiles)
        mean = y.mean(axis=0)
        # Dual form (n x n system) when there are fewer rows than terms: same solution, smaller solve.
        if x.shape[0] < x.shape[1]:
            gram = (x @ x.T).astype(np.float64) + alpha * np.eye(x.shape[0])
            weights = x.T.astype(np.float64) @ np.linalg.solve(gram, y - mean)
        else:
            gram = (x.T @ x).astype(np.float64) + alpha * np.eye(x.shape[1])
            weights = np.linalg.solve(gram, (x.T @ (y - mean)).astype(np.float64))
        return cls(vectorizer, weights.astype(np.float32), mean.astype(np.float32), len(descriptions))

    def scores(self, descriptions: Sequence[str], smiles: Sequence[str]) -> np.ndarray:
        """(T, M) cosine between predicted and actual centred fingerprints."""
        predicted = self.vectorizer.transform(descriptions) @ self.weights
        actual = morgan_matrix(smiles) - self.fp_mean[None, :]
        predicted /= np.maximum(np.linalg.norm(predicted, axis=1, keepdims=True), 1e-12)
        actual /= np.maximum(np.linalg.norm(actual, axis=1, keepdims=True), 1e-12)
        return predicted @ actual.T

    def describe(self) -> dict[str, object]:
        return {
            "name": "tfidf_ridge_morgan",
            "features": f"TF-IDF word 1-2 grams, {len(self.vectorizer.vocabulary)} terms, min_df 2",
            "target": f"centred Morgan radius {FP_RADIUS}, {FP_BITS} bits",
            "ridge_alpha": RIDGE_ALPHA,
            "score": "cosine(predicted fingerprint, molecule fingerprint)",
            "train_pairs": self.train_pairs,
        }


def nearest_neighbour_captions(
    query_smiles: Sequence[str], train_smiles: Sequence[str], train_descriptions: Sequence[str]
) -> list[str]:
    """Caption of each query = first train description of its most Tanimoto-similar train molecule
    (ties: the first such train row)."""
    train_fps = morgan_bitvects(train_smiles)
    out = []
    for fp in morgan_bitvects(query_smiles):
        similarity = np.asarray(DataStructs.BulkTanimotoSimilarity(fp, train_fps))
        out.append(train_descriptions[int(np.argmax(similarity))])
    return out
