"""Data: pair TSV parsing, the fixed split, weak-label templating and leakage, the view cache."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mvclam.engine.data import (
    PairDataset,
    caption_from_labels,
    parse_label_set,
    prepare_pairs,
    prepare_weak_labels,
    read_pairs,
    read_weak_labels,
    split_bucket,
    split_of,
)
from mvclam.engine.views import ViewConfig, canonical_smiles, inchikey, standardize

ASPIRIN_KEY = "BSYNRYMUTXBXSQ-UHFFFAOYSA-N"


def write_tsv(path: Path, rows: list[str]) -> Path:
    path.write_text("cid\tsmiles\tdescription\n" + "\n".join(rows) + "\n")
    return path


def test_read_pairs_keeps_malformed_lines_as_errors(tmp_path):
    path = write_tsv(
        tmp_path / "demo_set.tsv",
        ["1\tCCO\tThe molecule is ethanol.", "2\tCC only two fields", "", "3\tCC\t ", "4\tC\tmethane\textra"],
    )
    table = read_pairs(path)
    rows = table.to_pylist()
    assert [r["line"] for r in rows] == [2, 3, 5, 6]  # the blank line 4 is not a row
    assert rows[0] == {
        "cid": "1",
        "smiles": "CCO",
        "description": "The molecule is ethanol.",
        "source": "demo_set",
        "line": 2,
        "error": None,
    }
    assert "expected 3" in rows[1]["error"]
    assert rows[2]["error"] == "empty description"
    assert "got 4" in rows[3]["error"]


def test_read_pairs_rejects_wrong_header(tmp_path):
    path = tmp_path / "x.tsv"
    path.write_text("smiles\tcid\tdescription\nC\t1\tmethane\n")
    with pytest.raises(ValueError, match="header"):
        read_pairs(path)


def test_split_rule_is_pinned_and_balanced():
    # Pinned values: changing the rule silently would move test molecules into training.
    assert split_bucket(ASPIRIN_KEY) == split_bucket(ASPIRIN_KEY) == 43
    assert split_of(ASPIRIN_KEY) == "train"
    keys = [f"KEY{i:06d}-UHFFFAOYSA-N" for i in range(20000)]
    counts = {s: 0 for s in ("train", "validation", "test")}
    for key in keys:
        counts[split_of(key)] += 1
    assert abs(counts["test"] / len(keys) - 0.10) < 0.01
    assert abs(counts["validation"] / len(keys) - 0.10) < 0.01
    with pytest.raises(ValueError):
        split_of("")


def test_parse_label_set_is_safe_and_sorted():
    assert parse_label_set("{'b label', 'a label'}") == ["a label", "b label"]
    for bad in ("__import__('os').system('true')", "{1, 2}", "set()", "{'a'", "42"):
        with pytest.raises(ValueError):
            parse_label_set(bad)


def test_caption_templates_are_deterministic_and_grouped():
    groups = {
        "kinase inhibitor": "agent",
        "Hypertension": "health",
        "green": "organoleptic",
        "Odor_evaluation": None,
    }
    labels = ["kinase inhibitor", "Hypertension", "green", "Odor_evaluation"]
    first = caption_from_labels(labels, "CCO", seed=0, label_groups=groups)
    assert first == caption_from_labels(list(reversed(labels)), "CCO", seed=0, label_groups=groups)
    assert "a kinase inhibitor" in first and "hypertension" in first and "green" in first
    assert "Odor" not in first  # meta label dropped
    assert first.index("kinase") < first.index("hypertension") < first.index("green")  # group order
    assert caption_from_labels(["Odor_evaluation"], "C", 0, groups) is None
    # The seed changes wordings for some molecules, never the content.
    variants = {caption_from_labels(["kinase inhibitor"], f"C{i}", 0, groups) for i in range(20)}
    assert variants == {
        "The molecule is a kinase inhibitor.",
        "The molecule has a role as a kinase inhibitor.",
    }


def test_read_weak_labels_limit_cap_and_errors(tmp_path):
    path = tmp_path / "props.txt.gz"
    lines = [f"{'C' * (i % 5 + 1)}\t{{'kinase inhibitor'}}" for i in range(30)]
    lines += ["CCO\t{'anti inflammatory', 'Aging'}", "CCN no tab", "CCC\tnot a set"]
    with gzip.open(path, "wt") as handle:
        handle.write("\n".join(lines) + "\n")
    table = read_weak_labels(path, seed=0, max_per_label_set=4, label_groups={"Aging": "health"})
    rows = table.to_pylist()
    assert sum(r["labels"] == ["kinase inhibitor"] for r in rows) == 4  # capped
    good = next(r for r in rows if r["smiles"] == "CCO")
    assert "an anti inflammatory" in good["description"] and "aging" in good["description"]
    errors = {r["line"]: r["error"] for r in rows if r["error"]}
    assert set(errors) == {32, 33} and "expected 2" in errors[32] and "bad label set" in errors[33]
    assert read_weak_labels(path, limit=3, seed=1, max_per_label_set=None).num_rows == 3
    assert (
        read_weak_labels(path, limit=3, seed=1).to_pylist()
        == read_weak_labels(path, limit=3, seed=1).to_pylist()
    )


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("prepared")
    a = write_tsv(
        root / "set_a.tsv",
        [
            "1\tCC(=O)Oc1ccccc1C(=O)O\taspirin, described once",
            "2\tCCO\tethanol",
            "3\tC[Pt]C\tan organoplatinum",
            "4\tbroken line",
            "5\tc1ccccc1\tbenzene",
        ],
    )
    b = write_tsv(
        root / "set_b.tsv",
        [
            "9\tOC(=O)c1ccccc1OC(C)=O\taspirin, described twice",  # same molecule, other SMILES
            "10\tCC(=O)Oc1ccccc1C(=O)[O-].[Na+]\taspirin sodium salt",  # salt: parent's key
            "11\tCCN\tethylamine",
        ],
    )
    out = root / "out"
    entry = prepare_pairs([a, b], out, workers=1, config=ViewConfig(), log=lambda m: None)
    return out, entry


def test_prepare_pairs_computes_each_molecule_once(prepared):
    out, entry = prepared
    assert entry["rows_read"] == 8 and entry["errors"] == 2
    assert entry["errors_by_code"] == {"unsupported_element": 1, "malformed_line": 1}
    # Aspirin written two ways is one canonical molecule (views computed once); the sodium salt
    # keeps its charged carboxylate (charges are kept), a molecule of its own: 5 distinct in all.
    assert entry["unique_canonical_molecules"] == 5
    pairs = pq.read_table(out / "pairs.parquet")
    assert pairs.num_rows == 6
    errors = pq.read_table(out / "errors.parquet").to_pylist()
    assert {(e["source"], e["line"], e["error"]) for e in errors} == {
        ("set_a", 4, "unsupported_element"),
        ("set_a", 5, "malformed_line"),
    }
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["pairs"]["counts"]["pairs"] == 6
    assert manifest["pairs"]["view_config"] == ViewConfig().to_dict()


def test_no_molecule_crosses_splits(prepared):
    out, _ = prepared
    table = pq.read_table(out / "pairs.parquet", columns=["inchikey", "split"]).to_pylist()
    by_key: dict[str, set[str]] = {}
    for row in table:
        by_key.setdefault(row["inchikey"], set()).add(row["split"])
        assert row["split"] == split_of(row["inchikey"])
    assert all(len(splits) == 1 for splits in by_key.values())
    aspirin_rows = [r for r in table if r["inchikey"] == ASPIRIN_KEY]
    assert len(aspirin_rows) == 2  # both descriptions of the neutral molecule, from two files


def test_pair_dataset_groups_rows_of_a_molecule(prepared):
    out, _ = prepared
    data = PairDataset.load(out, "all")
    assert len(data) == 6 and len(data.views) == len(data.descriptions) == len(data.inchikeys) == 6
    first, second = (i for i, k in enumerate(data.inchikeys) if k == ASPIRIN_KEY)
    assert data.group_ids[first] == data.group_ids[second]
    assert len(set(data.group_ids.tolist())) == data.num_molecules == len(set(data.inchikeys))
    assert data.views[first].equals(data.views[second])
    train = PairDataset.load(out, "train")
    assert all(split_of(k) == "train" for k in train.inchikeys)
    with pytest.raises(ValueError):
        PairDataset.load(out, "dev")


def test_weak_labels_exclude_held_out_molecules(prepared, tmp_path):
    out, _ = prepared
    labels = tmp_path / "props.txt"
    labels.write_text("CCO\t{'solvent'}\nOCC\t{'fuel'}\nCCCC\t{'fuel additive'}\n")
    ethanol = inchikey(standardize("CCO"))
    entry = prepare_weak_labels(labels, out, workers=1, held_out={ethanol}, log=lambda m: None)
    assert entry["excluded_held_out_molecules"] == 2 and entry["rows_written"] == 1
    weak = PairDataset.load(out, "train", kind="weak")
    assert weak.inchikeys == [inchikey(standardize("CCCC"))]
    assert weak.views[0].canonical_smiles == canonical_smiles(standardize("CCCC"))
