"""Catalog readers, the Arrow vector builders and the LanceDB store (no Ray)."""

from __future__ import annotations

import gzip
import io

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mvclam.engine.io import catalog_format, read_catalog_file, resolve_inputs
from mvclam.engine.store import (
    ERRORS_SCHEMA,
    PROPERTY_FIELDS,
    CatalogStore,
    embeddings_schema,
    multivector_array,
    sql_in_list,
    vector_array,
)
from mvclam.engine.views import MoleculeProperties


def read_all(path, **kwargs) -> pa.Table:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as handle:
        return pa.concat_tables(read_catalog_file(io.BytesIO(handle.read()), str(path), **kwargs))


def test_smi_ids_rows_and_blank_lines(tmp_path):
    path = tmp_path / "lib.smi"
    path.write_text("CCO ethanol\n\nc1ccccc1\nC1CC(( broken one\n")
    table = read_all(path, rows_per_block=2)
    assert table["id"].to_pylist() == ["ethanol", "lib.smi:2", "lib.smi:3", "broken one"]
    assert table["input"].to_pylist() == ["CCO", "", "c1ccccc1", "C1CC(("]
    assert table["source_row"].to_pylist() == [1, 2, 3, 4]
    assert set(table["source"].to_pylist()) == {"lib.smi"}


def test_csv_tsv_parquet_autodetect_and_explicit_columns(tmp_path):
    (tmp_path / "a.csv").write_text("Name,SMILES,mw\nm1,CCO,46\n,CCN,45\n")
    (tmp_path / "a.tsv").write_text("smi\tcode\nCCO\tx1\n")
    pq.write_table(pa.table({"structure": ["CCO", "CCC"], "key": [7, 8]}), tmp_path / "a.parquet")
    assert read_all(tmp_path / "a.csv")["id"].to_pylist() == ["m1", "a.csv:2"]  # empty id -> derived
    assert read_all(tmp_path / "a.tsv", id_column="code")["id"].to_pylist() == ["x1"]
    with open(tmp_path / "a.parquet", "rb") as handle:
        blocks = read_catalog_file(
            pa.BufferReader(handle.read()), "a.parquet", smiles_column="structure", id_column="key"
        )
        table = pa.concat_tables(blocks)
    assert table["id"].to_pylist() == ["7", "8"] and table["input"].to_pylist() == ["CCO", "CCC"]
    with pytest.raises(ValueError, match="no SMILES column"):
        read_all(tmp_path / "a.parquet")


def test_sdf_gz_titles_properties_stereo_and_bad_record(tmp_path):
    from rdkit import Chem

    mol = Chem.MolFromSmiles("C[C@H](N)C(=O)O")
    mol.SetProp("_Name", "L-alanine")
    mol.SetProp("catalog_id", "ALA-1")
    block = Chem.MolToMolBlock(mol)
    props = "> <catalog_id>\nALA-1\n\n"
    broken = "broken\n  junk\n\n  2  1  0  0  0  0  0  0  0  0999 V2000\nnot an atom line\nM  END\n"
    text = f"{block}{props}$$$$\n{broken}$$$$\n"
    path = tmp_path / "lib.sdf.gz"
    with gzip.open(path, "wt") as handle:
        handle.write(text)
    table = read_all(path)
    assert table["id"].to_pylist() == ["L-alanine", "broken"]
    assert table["input"][0].as_py() == Chem.MolToSmiles(mol)  # stereo kept
    assert table["read_error"][0].as_py() is None and "unparsable" in table["read_error"][1].as_py()
    assert read_all(path, id_column="catalog_id")["id"][0].as_py() == "ALA-1"
    assert catalog_format(str(path)) == "sdf"


def test_resolve_inputs_globs_dirs_and_unsupported(tmp_path):
    for name in ("b.smi", "a.csv", "notes.md"):
        (tmp_path / name).write_text("CCO\n")
    assert [p.rsplit("/", 1)[1] for p in resolve_inputs(str(tmp_path / "*.smi"))] == ["b.smi"]
    assert [p.rsplit("/", 1)[1] for p in resolve_inputs(str(tmp_path))] == ["a.csv", "b.smi"]
    with pytest.raises(ValueError, match="unsupported"):
        resolve_inputs(str(tmp_path / "notes.md"))
    with pytest.raises(FileNotFoundError):
        resolve_inputs(str(tmp_path / "*.sdf"))


def test_multivector_column_is_what_lancedb_searches(tmp_path):
    rng = np.random.default_rng(0)
    tokens = rng.standard_normal((3, 4, 8)).astype(np.float32)
    column = multivector_array(tokens)
    assert column.type == pa.list_(pa.list_(pa.float32(), 8))
    np.testing.assert_array_equal(np.stack(column[1].values.to_numpy(zero_copy_only=False)), tokens[1])
    half = multivector_array(tokens.astype(np.float16), pa.float16())
    assert half.type == pa.list_(pa.list_(pa.float16(), 8))
    table = pa.table({"id": ["a", "b", "c"], "tokens": column, "pooled": vector_array(tokens.mean(1))})
    db = lancedb.connect(str(tmp_path))
    hits = db.create_table("t", table).search(tokens[2], vector_column_name="tokens").limit(1).to_arrow()
    assert hits["id"].to_pylist() == ["c"]  # a (K, D) query is a multi-vector (MaxSim) search


def _rows(ids: list[str], version: str, dim: int = 4) -> pa.Table:
    schema = embeddings_schema(dim)
    n = len(ids)
    now = pa.array([0] * n, pa.int64()).cast(pa.timestamp("us", tz="UTC"))
    values = {
        "id": pa.array(ids),
        "tokens": multivector_array(np.ones((n, 2, dim), np.float32)),
        "pooled": vector_array(np.ones((n, dim), np.float32)),
        "model_version": pa.array([version] * n),
        "embedded_at": now,
    }
    columns = [values.get(f.name, pa.nulls(n, f.type)) for f in schema]
    for i, f in enumerate(schema):
        if not f.nullable and f.name not in values:
            columns[i] = (
                pa.array([[]] * n, f.type)
                if pa.types.is_list(f.type)
                else pa.array([0 if pa.types.is_integer(f.type) else "x"] * n, f.type)
            )
    return pa.Table.from_arrays(columns, schema=schema)


def _errors(ids: list[str], version: str) -> pa.Table:
    n = len(ids)
    return pa.table(
        {
            "id": ids,
            "input": ["?"] * n,
            "error_code": ["parse_error"] * n,
            "reason": ["bad"] * n,
            "source": ["f"] * n,
            "source_row": list(range(n)),
            "model_version": [version] * n,
            "failed_at": pa.array([0] * n, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        }
    ).cast(ERRORS_SCHEMA)


def test_store_keyed_writes_versions_and_one_table_per_id(tmp_path):
    store = CatalogStore.open(tmp_path, "mols", embeddings_schema(4))
    assert len(store.done_ids("v1")) == 0
    store.write(_rows(["a", "b"], "v1"), _errors(["c"], "v1"))
    store.write(_rows(["b"], "v1"), None)  # keyed: rewriting b does not duplicate it
    assert store.counts() == (2, 1)
    assert sorted(store.done_ids("v1").done.to_pylist()) == ["a", "b", "c"]
    # A new model version: nothing is done; c now embeds, a now fails -> each id moves table.
    state = store.done_ids("v2")
    assert len(state) == 0 and sorted(state.embedded_other.to_pylist()) == ["a", "b"]
    store.write(_rows(["c"], "v2"), _errors(["a"], "v2"))
    emb = store.embeddings.to_lance().to_table(columns=["id", "model_version"]).to_pylist()
    err = store.errors.to_lance().to_table(columns=["id", "model_version"]).to_pylist()
    assert sorted((r["id"], r["model_version"]) for r in emb) == [("b", "v1"), ("c", "v2")]
    assert err == [{"id": "a", "model_version": "v2"}]
    store.close()  # the writer lock: a second store is refused while this one is open
    with pytest.raises(ValueError, match="another schema"):
        CatalogStore.open(tmp_path, "mols", embeddings_schema(8))


def test_reconcile_repairs_an_id_left_in_both_tables(tmp_path):
    store = CatalogStore.open(tmp_path, "mols", embeddings_schema(4))
    store.write(_rows(["a"], "v1"), None)
    store.errors.add(_errors(["a"], "v2"))  # as if killed between the two commits of a v2 chunk
    state = store.reconcile("v2")
    assert state.done.to_pylist() == ["a"] and store.counts() == (0, 1)


def test_sql_in_list_quotes():
    assert sql_in_list(["a'b", "c"]) == "id IN ('a''b','c')"


def test_property_columns_follow_the_computed_properties():
    # The views stage zips MoleculeProperties into these columns by position.
    assert MoleculeProperties._fields == tuple(field.name for field in PROPERTY_FIELDS)
