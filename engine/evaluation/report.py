"""Retrieval and captioning reports: the model, the baselines and the protocol in one JSON object."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mvclam.engine.data.pairs import read_pair_files
from mvclam.engine.data.prepare import PAIRS_FILE
from mvclam.engine.data.split import split_of, split_rule
from mvclam.engine.evaluation.baselines import TextFingerprintRidge, nearest_neighbour_captions
from mvclam.engine.evaluation.captioning import CaptionFn, caption_metrics
from mvclam.engine.evaluation.eval_set import EvalSet
from mvclam.engine.evaluation.retrieval import expected_random_metrics, in_batch_indices, retrieval_metrics

IN_BATCH_SIZE = 64
SHUFFLE_SEED = 0
DEFAULT_RERANK_K = 20

PROTOCOL = {
    "scoring": "MaxSim: max over the molecule's 2K query tokens of the cosine with the text vector "
    "(mvclam.kernels.maxsim)",
    "queries": "text->molecule: every pair row over the distinct molecules (InChIKeys); "
    "molecule->text: every distinct molecule over all texts",
    "duplicates": "a molecule with several descriptions is one candidate; as a query it is correct when "
    "any of its descriptions ranks high (its other descriptions never count as mistakes)",
    "ties": "counted against the query (a wrong candidate with an equal score ranks first)",
    "full_set": "MRR, Hits@1, Hits@10 (Text2Mol); accuracy (= Hits@1) and Recall@20 (MolCA)",
    "in_batch": f"MolCA: rows shuffled with seed {SHUFFLE_SEED}, batches of {IN_BATCH_SIZE} rows, each batch "
    "its own candidate set; accuracy and Recall@20 averaged over all queries",
    "reranking": "the top-k candidates of each query (by MaxSim) re-ordered by the matching head's "
    "probability (model.match_probability); the rest keep their order below them",
}


@dataclass
class TrainData:
    """Train-split pairs for the baselines (never the evaluated molecules)."""

    smiles: list[str]  # canonical SMILES
    descriptions: list[str]
    source: str


def load_train_data(source: str | Path | Sequence[str | Path], exclude: set[str]) -> TrainData:
    """Train-split rows from a prepared directory (pairs.parquet) or from pair TSV files
    (standardised here to find their InChIKey), minus molecules in `exclude` (evaluated ones)."""
    paths = [Path(source)] if isinstance(source, str | Path) else [Path(p) for p in source]
    if len(paths) == 1 and paths[0].is_dir():
        table = pq.read_table(
            paths[0] / PAIRS_FILE, columns=["canonical_smiles", "inchikey", "description", "split"]
        )
        table = table.filter(pc.equal(table.column("split"), "train"))
        rows = [r for r in table.to_pylist() if r["inchikey"] not in exclude]
        return TrainData(
            [r["canonical_smiles"] for r in rows], [r["description"] for r in rows], str(paths[0])
        )
    from mvclam.engine.views import canonical_smiles, inchikey, standardize

    smiles, descriptions = [], []
    for row in read_pair_files(paths).to_pylist():
        if row["error"] is not None:
            continue
        try:
            mol = standardize(row["smiles"])
            key = inchikey(mol)
        except Exception:  # unusable rows are not training data for the baseline either
            continue
        if split_of(key) == "train" and key not in exclude:
            smiles.append(canonical_smiles(mol))
            descriptions.append(row["description"])
    return TrainData(smiles, descriptions, ", ".join(map(str, paths)))


def random_baseline(eval_set: EvalSet) -> dict[str, dict[str, float]]:
    """Exact expected metrics of a uniformly random ranking, full set and in-batch."""
    truth = eval_set.truth
    n_texts, n_molecules = len(truth), len(eval_set.molecule_keys)
    texts_per_molecule = np.bincount(truth, minlength=n_molecules)
    out = {}
    full_t2m = expected_random_metrics(np.full(n_texts, n_molecules), np.ones(n_texts, dtype=np.int64))
    full_m2t = expected_random_metrics(np.full(n_molecules, n_texts), texts_per_molecule)
    cand_t2m, pos_t2m, cand_m2t, pos_m2t = [], [], [], []
    for rows in in_batch_indices(n_texts, IN_BATCH_SIZE, SHUFFLE_SEED):
        molecules, local = np.unique(truth[rows], return_inverse=True)
        cand_t2m += [len(molecules)] * len(rows)
        pos_t2m += [1] * len(rows)
        counts = np.bincount(local)
        cand_m2t += [len(rows)] * len(molecules)
        pos_m2t += counts.tolist()
    batch_t2m = expected_random_metrics(cand_t2m, pos_t2m, (1, 20))
    batch_m2t = expected_random_metrics(cand_m2t, pos_m2t, (1, 20))
    for name, full, batch in (
        ("text_to_molecule", full_t2m, batch_t2m),
        ("molecule_to_text", full_m2t, batch_m2t),
    ):
        out[name] = {
            "mrr": full["mrr"],
            "hits@1": full["hits@1"],
            "hits@10": full["hits@10"],
            "accuracy": full["hits@1"],
            "recall@20": full["hits@20"],
            "in_batch_accuracy": batch["hits@1"],
            "in_batch_recall@20": batch["hits@20"],
            "in_batch_mrr": batch["mrr"],
        }
    return out


class ModelScorer:
    """MaxSim scores and cached matching-head probabilities of one MV-CLAM model on an EvalSet."""

    def __init__(self, model, eval_set: EvalSet, batch_size: int = 32):
        import torch

        from mvclam.engine.embedder import MoleculeEmbedder
        from mvclam.kernels import maxsim

        self.model = model.eval()
        self.eval_set = eval_set
        self.batch_size = batch_size
        embedder = MoleculeEmbedder(self.model, batch_size=batch_size)
        molecules = embedder.embed_views(eval_set.molecule_views)
        texts = embedder.embed_texts(eval_set.texts)
        with torch.inference_mode():
            self.scores = maxsim(texts.float(), molecules.tokens.float()).cpu().numpy()
        self._cache: dict[tuple[int, int], float] = {}

    def _molecule_states(self) -> list[list]:
        """Per molecule, the unpadded encoder states of each view (computed once: re-ranking
        scores each molecule against many texts, and the encoders dominate the cost)."""
        import torch

        from mvclam.engine.views import collate_views

        if getattr(self, "_states", None) is None:
            views = self.eval_set.molecule_views
            device = next(self.model.parameters()).device
            states: list[list] = [[] for _ in views]
            order = np.argsort([v.num_atoms for v in views], kind="stable").tolist()
            for start in range(0, len(order), self.batch_size):
                index = order[start : start + self.batch_size]
                batch = collate_views([views[i] for i in index]).to(device)
                with torch.inference_mode():
                    per_view, _ = self.model.encode_views(batch)
                for row, i in enumerate(index):
                    n = views[i].num_atoms
                    states[i] = [s[row, :n].cpu() for s in per_view]
            self._states = states
        return self._states

    def match_probability(self, text_index: np.ndarray, molecule_index: np.ndarray) -> np.ndarray:
        """Matching-head probability of (text, molecule) pairs, flat global indices; cached."""
        import torch

        pairs = list(zip(np.asarray(text_index).tolist(), np.asarray(molecule_index).tolist(), strict=True))
        missing = list(dict.fromkeys(p for p in pairs if p not in self._cache))
        if missing:
            states = self._molecule_states()
            views = self.eval_set.molecule_views
            missing.sort(key=lambda p: views[p[1]].num_atoms)  # little padding per chunk
            device = next(self.model.parameters()).device
            for start in range(0, len(missing), self.batch_size):
                chunk = missing[start : start + self.batch_size]
                padded, masks = _pad_states([states[m] for _, m in chunk], device)
                ids, mask = self.model.tokenize([self.eval_set.texts[t] for t, _ in chunk])
                with torch.inference_mode():
                    logits = self.model.match_logits(padded, masks, ids, mask)
                probability = logits.float().softmax(dim=-1)[:, 1].cpu().tolist()
                self._cache.update(zip(chunk, probability, strict=True))
        return np.array([self._cache[p] for p in pairs], dtype=np.float64)


def _pad_states(per_molecule: list[list], device) -> tuple[list, list]:
    """Stacks per-molecule (N_i, E_v) states of each view into (B, N_max, E_v) + (B, N_max) masks
    (the model is padding-invariant, see embedder.py)."""
    import torch

    sizes = [states[0].shape[0] for states in per_molecule]
    n_max, b = max(sizes), len(per_molecule)
    mask = torch.arange(n_max)[None, :] < torch.tensor(sizes)[:, None]
    padded = []
    for view in range(len(per_molecule[0])):
        width = per_molecule[0][view].shape[1]
        out = torch.zeros(b, n_max, width, dtype=per_molecule[0][view].dtype)
        for row, states in enumerate(per_molecule):
            out[row, : sizes[row]] = states[view]
        padded.append(out.to(device))
    mask = mask.to(device)
    return padded, [mask] * len(padded)


def model_info(model, checkpoint: str | None) -> dict[str, object]:
    import importlib.metadata

    return {
        "checkpoint": checkpoint,
        "model_version": getattr(model, "model_version", "unknown"),
        "trained": checkpoint is not None and getattr(model, "model_version", "untrained") != "untrained",
        "mvclam_version": importlib.metadata.version("mvclam"),
        "num_molecule_tokens": model.config.num_molecule_tokens,
        "embedding_dim": model.config.embedding_dim,
    }


def retrieval_report(
    eval_set: EvalSet,
    model=None,
    checkpoint: str | None = None,
    train_data: TrainData | None = None,
    rerank_k: int = DEFAULT_RERANK_K,
    log: Callable[[str], None] = lambda message: None,
) -> dict[str, object]:
    start = time.perf_counter()
    report: dict[str, object] = {
        "task": "retrieval",
        "data": eval_set.summary(),
        "split_rule": split_rule(),
        "protocol": {**PROTOCOL, "rerank_k": rerank_k},
        "results": {},
    }
    results: dict[str, object] = report["results"]  # type: ignore[assignment]
    if model is not None:
        log("scoring with the model")
        scorer = ModelScorer(model, eval_set)
        results["model"] = retrieval_metrics(
            scorer.scores,
            eval_set.truth,
            IN_BATCH_SIZE,
            SHUFFLE_SEED,
            rerank_k=rerank_k,
            match_probability=scorer.match_probability,
        )
        report["model"] = model_info(model, checkpoint)
    results["random"] = random_baseline(eval_set)
    if train_data is not None and train_data.descriptions:
        log(f"fitting the text-fingerprint baseline on {len(train_data.descriptions)} train pairs")
        ridge = TextFingerprintRidge.fit(train_data.descriptions, train_data.smiles)
        molecule_smiles = [v.canonical_smiles for v in eval_set.molecule_views]
        scores = ridge.scores(eval_set.texts, molecule_smiles)
        results["text_fingerprint"] = retrieval_metrics(scores, eval_set.truth, IN_BATCH_SIZE, SHUFFLE_SEED)
        report["baselines"] = {"text_fingerprint": {**ridge.describe(), "train_data": train_data.source}}
    else:
        report["baselines"] = {"text_fingerprint": "not run: no train data given"}
    report["seconds"] = round(time.perf_counter() - start, 1)
    return report


def captioning_report(
    eval_set: EvalSet,
    predictions: list[str] | None,
    prediction_source: str,
    train_data: TrainData | None = None,
    model_description: dict[str, object] | None = None,
) -> dict[str, object]:
    """`predictions`: one caption per distinct molecule of the set (eval_set.molecule_keys order);
    each pair row is scored against its own description (one reference per row, as MolT5)."""
    start = time.perf_counter()
    references = eval_set.texts
    report: dict[str, object] = {
        "task": "captioning",
        "data": eval_set.summary(),
        "split_rule": split_rule(),
        "protocol": {
            "tokens": "SciBERT uncased WordPiece, max 512, [PAD]/[CLS]/[SEP] removed",
            "bleu": "nltk corpus_bleu, one reference per pair row, weights (.5,.5) and (.25,.25,.25,.25)",
            "rouge": "rouge-score rouge1/rouge2/rougeL F-measure on raw strings, mean over rows",
            "meteor": "nltk meteor_score on the SciBERT tokens, mean over rows",
            "rows": "every pair row is one (prediction, reference); a molecule with several descriptions "
            "is captioned once and scored against each of them",
        },
        "results": {},
    }
    results: dict[str, object] = report["results"]  # type: ignore[assignment]
    if predictions is not None:
        per_row = [predictions[i] for i in eval_set.truth.tolist()]
        results["model"] = caption_metrics(per_row, references)
        from mvclam.engine.captioning.decoding import max_ngram_count  # (the package imports the LLM stack)

        repeats = [max_ngram_count(p, 4) for p in predictions]
        report["repetition"] = {
            "max_word_4gram_count": max(repeats, default=0),
            "captions_repeating_a_4gram_over_twice": sum(r > 2 for r in repeats),
            "captions": len(predictions),
            "distinct_captions": len(set(predictions)),
        }
        report["model"] = {"predictions": prediction_source, **(model_description or {})}
    if train_data is not None and train_data.descriptions:
        query = [v.canonical_smiles for v in eval_set.molecule_views]
        neighbours = nearest_neighbour_captions(query, train_data.smiles, train_data.descriptions)
        results["nearest_neighbour"] = caption_metrics(
            [neighbours[i] for i in eval_set.truth.tolist()], references
        )
        report["baselines"] = {
            "nearest_neighbour": {
                "caption": "first train description of the most Tanimoto-similar train molecule "
                "(Morgan radius 2, 2048 bits)",
                "train_pairs": len(train_data.descriptions),
                "train_data": train_data.source,
            }
        }
    else:
        report["baselines"] = {"nearest_neighbour": "not run: no train data given"}
    report["seconds"] = round(time.perf_counter() - start, 1)
    return report


def caption_molecules(eval_set: EvalSet, caption_fn: CaptionFn) -> list[str]:
    captions = caption_fn(list(eval_set.molecule_views))
    if len(captions) != len(eval_set.molecule_views):
        raise ValueError(
            f"caption function returned {len(captions)} captions for {len(eval_set.molecule_views)} molecules"
        )
    return [c or "" for c in captions]
