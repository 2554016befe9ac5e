"""Hubness experiment (issue 17): does a CSLS-style correction of MaxSim scores help retrieval?

A hub is a molecule whose tokens are close to almost every text (the README's sample catalog
answers two unrelated sentences with the same molecule). CSLS (Conneau et al. 2018) ranks by
`score(t, m) - beta * r(m)`, where r(m) is the mean of molecule m's top-k scores against a bank of
texts it is not evaluated on (here: training-split descriptions), and symmetrically r(t) against a
bank of training molecules for molecule -> text. Cheaper banks are compared with the full one:
k-means centroids of the bank and its mean vector, which fit in a checkpoint's config.

    python benchmarks/hubness_experiment.py embed --split validation --out runs/hubness/val.npz
    python benchmarks/hubness_experiment.py grid --embeddings runs/hubness/val.npz

`embed` writes the split's scores, the bank texts' vectors and the bank molecules' tokens;
`grid` prints MRR / Hits@1 for each bank, k and beta (no model needed).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

PAIR_FILES = sorted(str(p) for p in (Path(__file__).resolve().parents[2] / "shared/data/pairs").glob("*.tsv"))


def embed(args: argparse.Namespace) -> None:
    from mvclam.engine.embedder import MoleculeEmbedder, load_model
    from mvclam.engine.evaluation.eval_set import load_eval_set
    from mvclam.kernels import maxsim

    torch.manual_seed(0)
    model = load_model(args.model)
    embedder = MoleculeEmbedder(model, batch_size=32)
    pairs = args.pairs or PAIR_FILES
    evaluated = load_eval_set(pairs, args.split, model.config.views, args.prepared)
    bank = load_eval_set(pairs, "train", model.config.views, args.prepared)
    rng = np.random.default_rng(0)
    bank_molecules = rng.permutation(len(bank.molecule_views))[: args.bank_molecules]
    with torch.inference_mode():
        molecules = embedder.embed_views(evaluated.molecule_views)
        texts = embedder.embed_texts(evaluated.texts)
        bank_texts = embedder.embed_texts(bank.texts)
        bank_tokens = embedder.embed_views([bank.molecule_views[i] for i in bank_molecules.tolist()]).tokens
        scores = maxsim(texts.float(), molecules.tokens.float()).numpy()
        # (bank texts, evaluated molecules) and (evaluated texts, bank molecules), for r(m) and r(t)
        bank_text_scores = maxsim(bank_texts.float(), molecules.tokens.float()).numpy()
        bank_molecule_scores = maxsim(texts.float(), bank_tokens.float()).numpy()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out,
        scores=scores,
        truth=evaluated.truth,
        bank_text_scores=bank_text_scores,
        bank_molecule_scores=bank_molecule_scores,
        bank_texts=bank_texts.numpy(),
        molecule_tokens=molecules.tokens.numpy(),
        model_version=np.array(model.model_version),
    )
    print(
        f"wrote {out}: {scores.shape} scores, {len(bank.texts)} bank texts, {len(bank_molecules)} bank molecules"
    )


def top_k_mean(scores: np.ndarray, k: int, axis: int) -> np.ndarray:
    """Mean of the k largest values along `axis`."""
    k = min(k, scores.shape[axis])
    part = -np.partition(-scores, k - 1, axis=axis)
    return np.take(part, np.arange(k), axis=axis).mean(axis=axis)


def kmeans(vectors: np.ndarray, clusters: int, iterations: int = 25, seed: int = 0) -> np.ndarray:
    """Spherical k-means: unit-norm centroids of unit-norm vectors."""
    rng = np.random.default_rng(seed)
    x = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    centroids = x[rng.choice(len(x), clusters, replace=False)]
    for _ in range(iterations):
        assign = (x @ centroids.T).argmax(axis=1)
        for c in range(clusters):
            members = x[assign == c]
            if len(members):
                centroids[c] = members.sum(axis=0)
        centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    return centroids


def grid(args: argparse.Namespace) -> None:
    from mvclam.engine.evaluation.retrieval import retrieval_metrics

    data = np.load(args.embeddings)
    scores, truth = data["scores"], data["truth"]
    tokens = torch.from_numpy(data["molecule_tokens"]).float()
    tokens = tokens / tokens.norm(dim=-1, keepdim=True)

    def molecule_offsets(bank: np.ndarray, k: int) -> np.ndarray:
        bank_t = torch.from_numpy(bank).float()
        bank_t = bank_t / bank_t.norm(dim=-1, keepdim=True)
        s = torch.einsum("bd,mkd->bmk", bank_t, tokens).amax(dim=-1).numpy()  # (bank, M) MaxSim
        return top_k_mean(s, k, axis=0)

    def metrics(corrected: np.ndarray) -> dict:
        m = retrieval_metrics(corrected, truth)
        return {
            "t2m_mrr": round(m["text_to_molecule"]["mrr"], 4),
            "t2m_h1": round(m["text_to_molecule"]["hits@1"], 4),
            "m2t_mrr": round(m["molecule_to_text"]["mrr"], 4),
        }

    rows = [{"bank": "none", **metrics(scores)}]
    r_t_full = {k: top_k_mean(data["bank_molecule_scores"], k, axis=1) for k in (5, 10, 50)}
    banks = {"texts_all": None}
    for clusters in (64, 256):
        banks[f"kmeans_{clusters}"] = kmeans(data["bank_texts"], clusters)
    banks["mean"] = data["bank_texts"].mean(axis=0, keepdims=True)
    for name, bank in banks.items():
        for k in (1, 5, 10, 50) if name != "mean" else (1,):
            if name == "texts_all":
                r_m = top_k_mean(data["bank_text_scores"], k, axis=0)
            else:
                if k > len(bank):
                    continue
                r_m = molecule_offsets(bank, k)
            for beta in (0.5, 1.0):
                corrected = scores - beta * r_m[None, :] - beta * r_t_full[10][:, None]
                rows.append({"bank": name, "k": k, "beta": beta, **metrics(corrected)})
                print(json.dumps(rows[-1]), flush=True)
    print(json.dumps(rows[0]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    e = sub.add_parser("embed")
    e.add_argument("--model", default=None)
    e.add_argument("--pairs", nargs="+", default=None)
    e.add_argument("--split", default="validation")
    e.add_argument("--prepared", default="runs/data/v2")
    e.add_argument("--bank-molecules", type=int, default=3000)
    e.add_argument("--out", required=True)
    g = sub.add_parser("grid")
    g.add_argument("--embeddings", required=True)
    args = parser.parse_args(argv)
    embed(args) if args.command == "embed" else grid(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
