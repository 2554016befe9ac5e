"""The GPU training path (benchmarks/gpu_train.py) end to end on the CPU with a tiny budget:
pack a bundle, train a few steps with RDKit stubbed out (as on the GPU image), unpack."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from rdkit import Chem

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_train.py"
sys.path.insert(0, str(SCRIPT.parent))

from gpu_train import topological_distances  # noqa: E402

PAIRS = [
    ("1", "CC(=O)Oc1ccccc1C(=O)O", "The molecule is an aromatic ester and a carboxylic acid."),
    ("2", "CCO", "The molecule is a primary alcohol."),
    ("3", "c1ccccc1", "The molecule is an aromatic hydrocarbon."),
    ("4", "CC(C)Cc1ccc(C(C)C(=O)O)cc1", "The molecule is a propanoic acid and an NSAID."),
    ("5", "CN1C=NC2=C1C(=O)N(C(=O)N2C)C", "The molecule is a purine alkaloid."),
    ("6", "OCC(O)CO", "The molecule is a triol."),
    ("7", "CCN(CC)CC", "The molecule is a tertiary amine."),
    ("8", "O=C(O)CCC(=O)O", "The molecule is a dicarboxylic acid."),
    ("9", "CC(=O)N", "The molecule is a primary amide."),
    ("10", "C1CCCCC1", "The molecule is a cycloalkane."),
    ("11", "CCCCCCCC(=O)O", "The molecule is a medium-chain fatty acid."),
    ("12", "Nc1ccccc1", "The molecule is a primary arylamine."),
    ("13", "OC1=CC=CC=C1", "The molecule is a phenol."),
    ("14", "CC#N", "The molecule is a nitrile."),
    ("15", "ClC(Cl)Cl", "The molecule is a chloroalkane."),
    ("16", "C=CC=C", "The molecule is a diene."),
]


def test_topological_distances_match_rdkit():
    for smiles in ("CC(=O)Oc1ccccc1C(=O)O", "C1CC1.CCO", "C" * 30):
        mol = Chem.MolFromSmiles(smiles)
        bonds = np.array([(b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in mol.GetBonds()])
        expected = np.minimum(Chem.GetDistanceMatrix(mol), 255).astype(np.uint8)
        assert np.array_equal(topological_distances(mol.GetNumAtoms(), bonds), expected)


@pytest.mark.slow
def test_pack_run_unpack_on_cpu(tmp_path):
    from mvclam.engine.data.prepare import prepare_pairs
    from mvclam.engine.models import MVCLAM

    pairs = tmp_path / "pairs.tsv"
    pairs.write_text(
        "cid\tsmiles\tdescription\n" + "".join(f"{cid}\t{smi}\t{text}\n" for cid, smi, text in PAIRS)
    )
    data = tmp_path / "data"
    prepare_pairs([pairs], data, workers=1, log=lambda _: None)
    # The hash split of 16 molecules may leave validation empty: assign the splits by hand.
    table = pq.read_table(data / "pairs.parquet")
    splits = ["train"] * (table.num_rows - 4) + ["validation"] * 4
    table = table.set_column(table.column_names.index("split"), "split", pa.array(splits))
    pq.write_table(table, data / "pairs.parquet")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    bundle, out, work = tmp_path / "bundle", tmp_path / "out", tmp_path / "work"

    def script(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, str(SCRIPT), *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    facts = json.loads(script("pack", "--data", str(data), "--out", str(bundle)))
    assert facts["rows"] >= 1 and facts["word_rows"] > 10
    assert "topological_distance" not in pq.read_schema(bundle / "pairs.parquet").names
    # Coordinates travel as float16 (the bundle must fit beside the tree), within 0.01 A.
    packed, original = (
        pq.read_table(p, columns=["coordinates"])["coordinates"]
        for p in (bundle / "pairs.parquet", data / "pairs.parquet")
    )
    assert packed.type.value_type == pa.float16()
    assert (
        abs(
            packed.combine_chunks().flatten().to_numpy().astype("float32")
            - original.combine_chunks().flatten().to_numpy()
        ).max()
        < 0.01
    )
    assert facts["carried_with_the_tree"] is None or facts["carried_with_the_tree"] <= 64 * 2**20

    summary = json.loads(
        script(
            "run",
            "--bundle",
            str(bundle),
            "--out",
            str(out),
            "--work",
            str(work),
            "--cpu",
            "--stub-rdkit",
            "--max-steps",
            "2",
            "--set",
            "batch_size=4",
            "--set",
            "retrieval_eval_every=2",
            "--set",
            "checkpoint_every=1",
            "--minutes",
            "5",
            "--config",
            str(ROOT / "configs" / "train_stage1_gpu.yaml"),
        )
    )
    assert summary["steps"] == 2 and summary["parts"]
    assert all((out / name).stat().st_size <= 16 * 1024 * 1024 for name in summary["parts"])

    checkpoint = Path(script("unpack", "--parts", str(out), "--out", str(tmp_path / "ckpt")).strip())
    trained, shipped = (
        MVCLAM.from_pretrained(checkpoint),
        MVCLAM.from_pretrained(ROOT / "checkpoints" / "mvclam-small-chebi"),
    )
    config = json.loads((checkpoint / "config.json").read_text())
    assert (
        "qformer.embeddings.word_embeddings.weight" in config["referenced_tensors"]
    )  # MiniLM stays a reference
    moved = [
        name
        for name, p in trained.named_parameters()
        if not np.allclose(
            p.detach().numpy(), dict(shipped.named_parameters())[name].detach().numpy(), atol=1e-3
        )
    ]
    assert moved, "two training steps changed no weight"
