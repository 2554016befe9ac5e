"""Bulk captioning of a catalog table on Ray: every row captioned once, resumable, nightly-safe,
bad rows recorded, captions equal to direct generation (real SmolLM2, tiny MV-CLAM, 4 new tokens)."""

from __future__ import annotations

import pyarrow.compute as pc
import pytest
import torch

ray = pytest.importorskip("ray")
lancedb = pytest.importorskip("lancedb")

from test_embed_job import make_checkpoint, sample_rows, write_csv  # noqa: E402

from mvclam.engine.captioning import (  # noqa: E402
    CaptionerConfig,
    GenerationSettings,
    MoleculeCaptioner,
    load_captioning,
    save_captioner,
)
from mvclam.engine.models.mvclam import MVCLAM  # noqa: E402
from mvclam.engine.views import VIEW_SCHEMA, views_from_arrow  # noqa: E402
from mvclam.jobs.caption_table import load_caption_job, run_caption_table  # noqa: E402
from mvclam.jobs.embed import load_embed_job, run_embed  # noqa: E402

ROWS = 10


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny MV-CLAM with a (randomly adapted, marked trained) captioner in captioner/."""
    directory = make_checkpoint(tmp_path_factory.mktemp("ckpt") / "model", 0)
    torch.manual_seed(0)
    captioner = MoleculeCaptioner(
        CaptionerConfig.for_model(MVCLAM.from_pretrained(directory), lora_dropout=0.0)
    )
    captioner.trained = True
    save_captioner(captioner, directory)
    return directory


@pytest.fixture()
def catalog(tmp_path, checkpoint, local_ray):
    source = write_csv(tmp_path / "catalog.csv", sample_rows(ROWS))
    run_embed(
        load_embed_job(
            None, inputs=[str(source)], db=str(tmp_path / "db"), model=str(checkpoint), progress=False
        )
    )
    return tmp_path / "db"


def open_table(db):
    return lancedb.connect(str(db)).open_table("molecules")  # reopened: jobs commit new versions


def caption_job(db, checkpoint, **values):
    values = {
        "db": str(db),
        "model": str(checkpoint),
        "batch_size": 4,
        "commit_rows": 4,
        "max_new_tokens": 4,
        "progress": False,
        **values,
    }
    return load_caption_job(None, **values)


def test_table_job_captions_every_row_once_and_resumes(catalog, checkpoint):
    first = run_caption_table(caption_job(catalog, checkpoint, limit=4))  # a run stopped part-way
    assert (first.rows_todo, first.captioned, first.failed) == (4, 4, 0)
    rest = run_caption_table(caption_job(catalog, checkpoint))
    assert (rest.rows_todo, rest.captioned) == (ROWS - 4, ROWS - 4) and rest.commits == 2
    data = open_table(catalog).to_arrow()
    assert data.num_rows == ROWS and len(set(data["id"].to_pylist())) == ROWS  # no row added or lost
    assert data["caption"].null_count == 0 and data["caption_error"].null_count == ROWS
    assert set(data["caption_model_version"].to_pylist()) == {first.caption_version}
    assert data["caption_inchikey"].to_pylist() == data["inchikey"].to_pylist()
    assert '"max_new_tokens": 4' in data["caption_settings"][0].as_py()
    assert rest.generated_tokens > 0 and rest.to_dict()["mean_caption_tokens"] <= 4

    # The nightly re-run has nothing to do and changes nothing.
    again = run_caption_table(caption_job(catalog, checkpoint))
    assert again.rows_todo == 0 and again.commits == 0
    assert open_table(catalog).to_arrow()["captioned_at"].equals(data["captioned_at"])

    # Captions are those of direct generation from the stored views.
    captioning = load_captioning(checkpoint, batch_size=4, settings=GenerationSettings(max_new_tokens=4))
    stored = data.sort_by("id")
    views = views_from_arrow(stored.select(VIEW_SCHEMA.names).replace_schema_metadata(VIEW_SCHEMA.metadata))
    assert captioning.caption_views(views) == stored["caption"].to_pylist()

    # A molecule replaced under the same id (a catalog update) needs a new caption.
    first_id = stored["id"][0].as_py()
    open_table(catalog).update(
        where=f"id = '{first_id}'", values={"inchikey": "CHANGEDINCHIKEYXX-UHFFFAOYSA-N"}
    )
    changed = run_caption_table(caption_job(catalog, checkpoint))
    assert changed.rows_todo == 1 and changed.captioned == 1


def test_broken_row_is_recorded_and_the_batch_survives(catalog, checkpoint):
    table = open_table(catalog)
    broken = table.to_arrow()["id"][2].as_py()
    table.update(where=f"id = '{broken}'", values={"num_atoms": 999})  # views no longer decode
    summary = run_caption_table(caption_job(catalog, checkpoint))
    assert (summary.captioned, summary.failed) == (ROWS - 1, 1)
    data = open_table(catalog).to_arrow()
    row = data.filter(pc.equal(data["id"], broken))
    assert row["caption"][0].as_py() is None and "inconsistent" in row["caption_error"][0].as_py()
    assert data.filter(pc.not_equal(data["id"], broken))["caption"].null_count == 0
    # Failed rows are not retried every night unless asked.
    assert run_caption_table(caption_job(catalog, checkpoint)).rows_todo == 0
    assert run_caption_table(caption_job(catalog, checkpoint, retry_errors=True)).rows_todo == 1


def test_job_needs_a_trained_captioner(tmp_path):
    bare = make_checkpoint(tmp_path / "bare", 0)
    with pytest.raises(ValueError, match="trained captioner"):
        run_caption_table(caption_job(tmp_path / "db", bare))
