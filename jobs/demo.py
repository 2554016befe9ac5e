"""End-to-end demo of the foundation API: views → MV-CLAM embeddings → MaxSim text search.

Until the catalog embedding job lands this is the README's main job. The default model is
freshly initialised (no trained checkpoint ships yet), so scores show the mechanics, not chemistry.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from mvclam.engine.embedder import MoleculeEmbedder, load_model

# A few real molecules with their common names, plus rows that must fail cleanly.
DEMO_MOLECULES: list[tuple[str, str]] = [
    ("aspirin", "CC(=O)Oc1ccccc1C(=O)O"),
    ("caffeine", "Cn1c(=O)c2c(ncn2C)n(C)c1=O"),
    ("ibuprofen", "CC(C)Cc1ccc(cc1)[C@@H](C)C(=O)O"),
    ("penicillin G", "CC1([C@@H](N2[C@H](S1)[C@@H](C2=O)NC(=O)Cc3ccccc3)C(=O)O)C"),
    ("glycine zwitterion", "[NH3+]CC(=O)[O-]"),
    ("sodium benzoate", "[Na+].[O-]C(=O)c1ccccc1"),
    ("cholesterol", "C[C@H](CCCC(C)C)[C@H]1CC[C@@H]2[C@@]1(CC[C@H]3[C@H]2CC=C4[C@@]3(CC[C@@H](C4)O)C)C"),
    ("not a molecule", "C1CC(("),
    ("empty line", ""),
    ("cisplatin", "N[Pt](N)(Cl)Cl"),
]
DEMO_QUERIES: list[str] = [
    "a beta-lactam antibiotic active against gram-negative bacteria",
    "a nonsteroidal anti-inflammatory drug",
    "a steroid alcohol found in animal cell membranes",
]


@dataclass
class DemoReport:
    embedded: int
    failed: int
    seconds: float


def run_demo(checkpoint: str | None = None, config: str = "small", top_k: int = 3) -> DemoReport:
    torch.manual_seed(0)
    model = load_model(checkpoint, config)
    embedder = MoleculeEmbedder(model, batch_size=16)
    counts = model.parameter_counts()
    print(
        f"model: {model.config.name} (version {model.model_version}), {counts['total'] / 1e6:.1f}M parameters"
    )

    start = time.perf_counter()
    results, embeddings = embedder.embed_smiles([smiles for _, smiles in DEMO_MOLECULES])
    seconds = time.perf_counter() - start
    names = [DEMO_MOLECULES[r.index][0] for r in results if r.ok]
    for result in results:
        name = DEMO_MOLECULES[result.index][0]
        if result.ok:
            views = result.views
            print(
                f"  ok     {name:<20} atoms={views.num_atoms:<3} 3D={views.conformer_method:<12} {views.inchikey}"
            )
        else:
            print(f"  error  {name:<20} {result.error.code.value}: {result.error.reason}")
    print(
        f"embedded {len(names)} of {len(results)} rows in {seconds:.2f}s -> "
        f"tokens {tuple(embeddings.tokens.shape)}, pooled {tuple(embeddings.pooled.shape)}"
    )

    text_vectors = embedder.embed_texts(DEMO_QUERIES)
    scores = model.score(text_vectors, embeddings.tokens)
    for query, row in zip(DEMO_QUERIES, scores, strict=True):
        best = row.topk(min(top_k, len(names)))
        ranked = ", ".join(
            f"{names[i]} ({s:.3f})" for s, i in zip(best.values.tolist(), best.indices.tolist(), strict=True)
        )
        print(f"query: {query!r}\n  top: {ranked}")
    if model.model_version == "untrained":
        print(
            "note: this model is freshly initialised (no trained checkpoint yet): rankings are not meaningful."
        )
    return DemoReport(embedded=len(names), failed=len(results) - len(names), seconds=seconds)
