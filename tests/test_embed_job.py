"""The embedding job end to end on a local Ray instance: tables, determinism, resume, versions."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

ray = pytest.importorskip("ray")
lancedb = pytest.importorskip("lancedb")

from mvclam.engine.embedder import MoleculeEmbedder  # noqa: E402
from mvclam.engine.models.config import load_config  # noqa: E402
from mvclam.engine.models.mvclam import MVCLAM  # noqa: E402
from mvclam.engine.views import compute_views, views_from_arrow  # noqa: E402
from mvclam.jobs.embed import EmbedJob, _prepare_model, load_embed_job, run_embed  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample_catalog.csv"
TINY = [
    "qformer.init=none",
    "qformer.hidden_size=32",
    "qformer.num_layers=2",
    "qformer.num_heads=4",
    "qformer.intermediate_size=64",
    "qformer.num_query_tokens=3",
    "encoder_2d.hidden_size=32",
    "encoder_2d.num_layers=1",
    "encoder_2d.num_heads=4",
    "encoder_2d.ffn_size=64",
    "encoder_3d.hidden_size=32",
    "encoder_3d.num_layers=1",
    "encoder_3d.num_heads=4",
    "encoder_3d.ffn_size=64",
    "encoder_3d.num_gaussians=16",
    "embedding_dim=16",
    "max_text_length=16",
]


def sample_rows(n: int, skip: int = 0) -> list[tuple[str, str]]:
    """(id, smiles) of good molecules from the shipped sample catalog."""
    with open(SAMPLE) as handle:
        rows = [(r["id"], r["smiles"]) for r in csv.DictReader(handle) if not r["id"].startswith("BAD")]
    return rows[skip : skip + n]


def write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "smiles"])
        writer.writerows(rows)
    return path


def make_checkpoint(directory: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    return MVCLAM(load_config("small", TINY)).save_pretrained(directory)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    return make_checkpoint(root / "a", 0), make_checkpoint(root / "b", 1)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def job(tmp_path: Path, inputs: list[Path], model: Path, **kwargs) -> EmbedJob:
    values = dict(
        inputs=[str(p) for p in inputs],
        db=str(tmp_path / "db"),
        model=str(model),
        views_batch_size=6,
        encoder_batch_size=4,
        commit_rows=8,
        progress=False,
        optimize=False,
    )
    values.update(kwargs)
    return load_embed_job(None, **values)


def read_tables(db: Path, table: str = "molecules") -> tuple[pa.Table, pa.Table]:
    connection = lancedb.connect(str(db))
    return connection.open_table(table).to_arrow(), connection.open_table(f"{table}_errors").to_arrow()


def direct_embeddings(model_dir: Path, smiles: list[str]) -> np.ndarray:
    model = MVCLAM.from_pretrained(model_dir).eval()
    return (
        MoleculeEmbedder(model, batch_size=64).embed_views([compute_views(s) for s in smiles]).tokens.numpy()
    )


def test_job_tables_schema_determinism_duplicates_and_resume(tmp_path, checkpoints, local_ray):
    model_a, _ = checkpoints
    good = sample_rows(14)
    first = write_csv(tmp_path / "part1.csv", [*good[:8], ("BAD-1", "C1CC(("), ("BAD-2", ""), good[0]])
    second = tmp_path / "part2.smi"
    second.write_text("".join(f"{s} {i}\n" for i, s in good[8:12]) + "N[Pt](N)(Cl)Cl\n")

    summary = run_embed(job(tmp_path, [first, second], model_a, token_dtype="float16"))
    embedded, errors = read_tables(tmp_path / "db")
    expected_ok = [i for i, _ in good[:12]]
    assert sorted(embedded["id"].to_pylist()) == sorted(expected_ok)
    assert sorted(errors["id"].to_pylist()) == ["BAD-1", "BAD-2", "part2.smi:5"]
    assert (summary.rows_in, summary.embedded, summary.failed, summary.duplicates) == (16, 12, 3, 1)
    assert summary.commits >= 2 and summary.errors_by_code.keys() == {
        "parse_error",
        "empty_input",
        "unsupported_element",
    }
    # The first occurrence of a duplicated id is the stored one.
    dup = embedded.filter(pa.compute.equal(embedded["id"], good[0][0]))
    assert dup["source_row"].to_pylist() == [1]

    schema = embedded.schema
    assert schema.field("tokens").type == pa.list_(pa.list_(pa.float16(), 16))
    assert schema.field("pooled").type == pa.list_(pa.float16(), 16)
    assert set(embedded["model_version"].to_pylist()) == {summary.model_version}
    assert summary.model_version == MVCLAM.from_pretrained(model_a).model_version

    # Embeddings equal a direct in-process run (other actors, other batches: same vectors).
    order = {i: s for i, s in good}
    ids = embedded["id"].to_pylist()
    tokens = np.stack([np.stack(row) for row in embedded["tokens"].to_numpy(zero_copy_only=False)])
    reference = direct_embeddings(model_a, [order[i] for i in ids])
    np.testing.assert_allclose(tokens.astype(np.float32), reference, atol=2e-3)  # float16 storage

    # Stored views re-encode without RDKit and properties are those of the molecule.
    views = views_from_arrow(embedded.select([f.name for f in views_schema_fields()]))
    assert [v.canonical_smiles for v in views] == embedded["canonical_smiles"].to_pylist()
    assert all(mw > 50 for mw in embedded["mw"].to_pylist())
    assert embedded["heavy_atoms"].to_pylist() == [v.num_atoms for v in views]

    # Re-run: nothing to do, nothing duplicated.
    again = run_embed(job(tmp_path, [first, second], model_a, token_dtype="float16"))
    assert (again.embedded, again.failed, again.skipped) == (0, 0, 16)  # the duplicate too
    assert (again.table_rows, again.error_rows) == (12, 3)

    # Appended catalog: only its new ids are embedded.
    third = write_csv(tmp_path / "part3.csv", good[12:14])
    more = run_embed(job(tmp_path, [first, second, third], model_a, token_dtype="float16"))
    assert (more.embedded, more.skipped, more.table_rows) == (2, 16, 14)


def views_schema_fields():
    from mvclam.engine.views import VIEW_SCHEMA

    return list(VIEW_SCHEMA)


def test_new_model_version_reembeds_in_place(tmp_path, checkpoints, local_ray):
    model_a, model_b = checkpoints
    catalog = write_csv(tmp_path / "lib.csv", [*sample_rows(5), ("BAD", "C1CC((")])
    first = run_embed(job(tmp_path, [catalog], model_a))
    second = run_embed(job(tmp_path, [catalog], model_b))
    assert first.model_version != second.model_version
    assert (second.embedded, second.failed, second.skipped) == (5, 1, 0)
    embedded, errors = read_tables(tmp_path / "db")
    assert embedded.num_rows == 5 and errors.num_rows == 1
    assert set(embedded["model_version"].to_pylist()) == {second.model_version}
    assert set(errors["model_version"].to_pylist()) == {second.model_version}


def test_fresh_model_is_seeded_so_versions_repeat(tmp_path):
    config = dict(inputs=["x.smi"], db="unused", model_config="small", model_overrides=TINY)
    first = _prepare_model(EmbedJob(**config, seed=3), tmp_path / "one")
    second = _prepare_model(EmbedJob(**config, seed=3), tmp_path / "two")
    other = _prepare_model(EmbedJob(**config, seed=4), tmp_path / "three")
    assert first[2] == second[2] != other[2]
    assert first[0] == second[0]  # byte-identical checkpoints: every actor gets the same weights


def test_job_config_yaml_defaults_and_validation(tmp_path):
    loaded = load_embed_job(None, inputs=["a.smi"], db="d", encoders=2)
    assert loaded.table == "molecules" and loaded.encoders == 2 and loaded.commit_rows == 1024
    bad = tmp_path / "job.yaml"
    bad.write_text("encoderz: 3\n")
    with pytest.raises(ValueError, match="encoderz"):
        load_embed_job(bad, inputs=["a.smi"], db="d")
    with pytest.raises(ValueError, match="token_dtype"):
        EmbedJob(inputs=["a.smi"], db="d", token_dtype="int8")
