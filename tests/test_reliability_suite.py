"""The bounded reliability and security suite (docs/reliability.md), at CI sizes.

The scripts in benchmarks/reliability/ run the full campaign (`campaign.py --scale full`); these
tests run the same code at `campaign.SCALES["ci"]` with the tests' tiny random model and assert
the figures: 0 crashes, 0 rows lost, 0 duplicates after a re-run, 0 5xx, short JSON errors, rows
kept across kills and faults. Bugs the suite found are regression tests at the end of each
section (docs/reliability.md, "Bugs found"); they were `xfail(strict=True)` until their fixes, and
the fast ones of tests/test_reliability_fixes.py pin each fix without a whole campaign.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
lancedb = pytest.importorskip("lancedb")

SUITE = Path(__file__).resolve().parents[1] / "benchmarks" / "reliability"
sys.path.insert(0, str(SUITE))

import campaign  # noqa: E402
import rel_common  # noqa: E402
import rel_crashes  # noqa: E402
import rel_faults  # noqa: E402
import rel_hostile  # noqa: E402
import rel_http  # noqa: E402
import rel_readers  # noqa: E402
import rel_security  # noqa: E402
from test_embed_job import make_checkpoint, sample_rows, write_csv  # noqa: E402

pytestmark = pytest.mark.slow
CI = campaign.SCALES["ci"]
# MVCLAM_RELIABILITY_REPORT=path.json keeps the figures of a run (docs/reliability.md, "CI size").
REPORT = os.environ.get("MVCLAM_RELIABILITY_REPORT")


def record(item: str, figures: dict) -> dict:
    if REPORT:
        path = Path(REPORT)
        report = json.loads(path.read_text()) if path.exists() else {"scale": "ci"}
        report[item] = figures
        path.write_text(json.dumps(report, indent=1, default=str))
    return figures


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("reliability")


@pytest.fixture(scope="module")
def model(root) -> str:
    """The tests' tiny random MV-CLAM with a random captioner (what `mvclam caption` needs)."""
    return str(rel_common.make_tiny_checkpoint(root / "tiny-0", 0, captioner=True))


@pytest.fixture(scope="module")
def model_b(root) -> str:
    """Another version of the same architecture."""
    return str(make_checkpoint(root / "tiny-1", 1))


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module", autouse=True)
def child_process_items(request, root, model, model_b):
    """The crash and readers items drive `mvclam` child processes, which mostly wait (on Ray
    starting, actors loading, kill moments, reader pauses) rather than compute: each runs in a
    thread from the module's first test, beside the in-process items, instead of after them."""
    selected = {name for item in request.session.items for name in item.fixturenames}
    readers_settings = {k: v for k, v in CI["readers"].items() if k != "two_jobs_molecules"}
    items = {
        "crashes": lambda: rel_crashes.run(root / "crashes", model=model, **CI["crashes"]),
        "readers": lambda: rel_readers.readers_during_writes(
            root / "readers", model=model, model_b=model_b, **readers_settings
        ),
    }
    with ThreadPoolExecutor(max_workers=len(items), thread_name_prefix="child-item") as pool:
        yield {name: pool.submit(run) for name, run in items.items() if name in selected}


# --- 6. security: the code and the service's defaults ------------------------------------------


def test_security_scan_finds_nothing_and_the_service_is_closed():
    figures = record("security", rel_security.run())
    assert figures["static"]["files"] > 50
    assert figures["static"]["findings"] == []  # no pickle, torch.load, eval, unsafe YAML, shell=True
    rules = {e["rule"] for e in figures["static"]["evidence"]}
    assert "YAML read with yaml.safe_load" in rules and "weights read with safetensors" in rules
    service = figures["service"]
    assert service["serve_default_host"] == service["cli_default_host"] == "127.0.0.1"
    assert not service["cors"] and service["middleware"] == ["BodyLimit"]
    assert set(service["request_fields"]) == {"POST /api/search", "POST /api/similar"}
    assert service["forbidden_request_fields"] == {}  # no SQL, path, table or embeddings field


def test_security_scan_catches_what_it_looks_for(tmp_path):
    bad = tmp_path / "engine" / "bad.py"
    bad.parent.mkdir()
    bad.write_text(
        "import pickle\nimport subprocess, torch, yaml\n"
        "torch.load('x')\nyaml.load(open('y'))\nsubprocess.run('ls', shell=True)\neval('1')\n"
        "HOST = '0.0.0.0'\n"
    )
    findings, _ = rel_security.scan_file(bad, tmp_path)
    assert {f["rule"] for f in findings} == {
        "imports pickle",
        "torch.load without weights_only=True",
        "yaml.load (not safe_load)",
        "shell=True",
        "calls eval()",
        "0.0.0.0 literal (binds every interface)",
    }


# --- 1. hostile input ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hostile(root, model, local_ray) -> dict:
    return record("hostile", rel_hostile.run(root / "hostile", model=model, **CI["hostile"]))


def test_hostile_rows_of_every_format_are_all_accounted_for(hostile):
    assert hostile["crashes"] == 0, hostile["crash_messages"]
    assert hostile["hostile_rows"] >= 6 * CI["hostile"]["rows"]
    assert all(f["within_bounds"] for f in hostile["files"].values()), hostile["files"]
    job = hostile["job"]
    assert job["rows_in_equals_reader"] and job["accounted"], job
    tables = hostile["tables"]
    assert tables["rows_lost"] == 0 and tables["rows_unexpected"] == 0, tables["lost_examples"]
    assert tables["ids_in_both_tables"] == 0 and tables["duplicate_rows"] == 0
    assert tables["distinct_ids_read"] == tables["embedded_rows"] + tables["error_rows"]
    assert tables["max_reason_chars"] <= 500
    assert {
        "parse_error",
        "sanitization_error",
        "unsupported_element",
        "too_many_atoms",
        "empty_input",
    } <= set(tables["error_codes"]), tables["error_codes"]
    assert tables["error_codes"].get("read_error", 0) >= 1  # SDF records RDKit cannot read
    manifest = hostile["manifest"]
    assert manifest["ids_checked"] > 0.5 * hostile["rows_tried"]
    assert manifest["ids_missing"] == 0, manifest["examples"]
    assert manifest["good_not_embedded"] == 0, manifest["examples"]
    assert manifest["inputs_not_first_occurrence"] == 0, manifest["examples"]
    rerun = hostile["rerun"]
    assert (rerun["embedded"], rerun["failed"], rerun["duplicate_rows"]) == (0, 0, 0)
    assert not rerun["rows_changed"] and rerun["skipped"] == job["rows_in"]
    assert hostile["search"]["hits_missing"] == 0 and hostile["search"]["hits"] > 0


def test_broken_files_give_rows_or_a_refusal_that_names_the_file(hostile):
    outcomes = hostile["broken_files"]
    for name in ("missing_smiles_column.csv", "no_smiles.parquet", "utf16.csv"):
        assert outcomes[name]["outcome"] == "refused" and outcomes[name]["names_file"], outcomes[name]
    for name in (
        "truncated_block.sdf",
        "truncated.sdf.gz",
        "not_gzip.smi.gz",
        "bad_crc.csv.gz",
        "unclosed_quote.csv",
    ):
        assert outcomes[name]["outcome"] == "rows" and outcomes[name]["error_rows"] >= 1, outcomes[name]
    assert hostile["broken_rows_job"]["rows_lost"] == 0 and hostile["broken_rows_job"]["duplicate_rows"] == 0
    (refusal,) = hostile["broken_job_refusals"].values()
    assert refusal["outcome"] == "refused" and refusal["names_file"] and refusal["tables_left"] == []


def test_garbage_after_a_valid_smiles_is_not_embedded(hostile):
    from mvclam.engine.views import ViewError, compute_views

    embedded = {}
    for smiles in ("CCO\ufffd", "CCOü", "C" + "é" * 30, "CCO\x01", "CCO junk", "CCO\xa0x"):
        with contextlib.suppress(ViewError):
            embedded[smiles] = compute_views(smiles).canonical_smiles
    assert embedded == {}, embedded  # before the fix: each was embedded as its prefix (CCO, C)
    assert hostile["manifest"]["garbage_embedded"] == 0


def test_an_unparsable_non_ascii_smiles_is_a_parse_error(hostile):
    from mvclam.engine.views import ViewError, ViewErrorCode, compute_views

    try:
        compute_views("C(" + "é" * 200)
        outcome = "embedded"
    except ViewError as error:
        outcome = error.code
    except Exception as error:  # before the fix: UnicodeDecodeError out of RDKit's log
        outcome = type(error).__name__
    assert outcome == ViewErrorCode.PARSE_ERROR, outcome
    assert "unexpected" not in hostile["tables"]["error_codes"]


def test_parquet_files_with_a_wrong_schema_or_damage_name_the_file(hostile):
    for name in (
        "binary_smiles.parquet",
        "list_smiles.parquet",
        "struct_id.parquet",
        "not_parquet.parquet",
        "truncated.parquet",
    ):
        outcome = hostile["broken_files"][name]
        assert outcome["outcome"] == "rows" or outcome["names_file"], (name, outcome)


def test_csv_with_a_byte_order_mark_keeps_its_id_column(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufeffid,smiles\nmol-1,CCO\n".encode())
    assert [r["id"] for r in rel_hostile.reader_rows(path)] == ["mol-1"]
    path.write_bytes("\ufeffsmiles,id\nCCO,mol-1\n".encode())
    assert [r["id"] for r in rel_hostile.reader_rows(path)] == ["mol-1"]


# --- 5. faults -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def faults(root, model, local_ray) -> dict:
    return record("faults", rel_faults.run(root / "faults", model=model, **CI["faults"]))


def test_read_only_database_fails_clearly_and_keeps_serving(faults):
    figures = faults["read_only"]
    if "skipped" in figures:
        pytest.skip(figures["skipped"])
    assert figures["embed"]["failed"] and figures["embed_new_table"]["failed"]
    assert figures["clear_errors"], (figures["embed"]["message"], figures["embed_new_table"]["message"])
    assert figures["unchanged"] and figures["rows_after"] == faults["base"]["rows"]
    assert not figures["search"]["failed"] and figures["search"]["hits"] == 5


def test_full_disk_fails_clearly_keeps_committed_rows_and_resumes_exactly(faults):
    figures = faults["full_disk"]
    if "skipped" in figures:
        pytest.skip(figures["skipped"])
    assert figures["embed"]["failed"] and figures["clear_error"], figures["embed"]
    assert not figures["embed"]["reveals_internals"], figures["embed"]  # was Lance's, with Rust paths
    assert figures["readable_after"] and figures["committed_rows_kept"]
    assert figures["duplicate_rows_after_failure"] == 0
    assert not figures["resume"]["failed"] and figures["exact_after_resume"], figures


@pytest.mark.parametrize("mode", ["data", "manifest"])
def test_damaged_latest_version_is_detected_and_an_earlier_version_restored(faults, mode):
    figures = faults[f"damaged_{mode}"]
    assert figures["http_before"]["status"] == 200
    assert figures["embed"]["failed"] and figures["search"]["failed"]  # never silently ignored
    assert figures["committed_rows_kept"] and figures["rows_after_recovery"] == figures["rows_previous"]
    assert figures["readable_after_recovery"] == figures["rows_previous"]
    assert not figures["resume"]["failed"] and figures["final_duplicates"] == 0
    assert figures["final_rows"] == figures["rows_latest"]


@pytest.mark.parametrize("mode", ["data", "manifest"])
def test_damaged_table_errors_name_the_damage_without_internals(faults, mode):
    assert faults[f"damaged_{mode}"]["clear_errors"], faults[f"damaged_{mode}"]["embed"]


def test_damaged_data_file_is_not_blamed_on_the_client(faults):
    http = faults["damaged_data"]["http"]
    assert http["status"] >= 500 and http["detail"] != "invalid filter", http


# --- 2. crashes: a resume is bit-exact, one CPU does not hang --------------------------------------


def test_a_resumed_run_stores_the_clean_runs_tokens_bit_for_bit(tmp_path, model, local_ray):
    """A kill leaves some rows done; the resume encodes the others in other batches (the done ones
    are skipped). Here the done rows are each block's largest molecule, so padding changes."""
    import numpy as np
    from rdkit import Chem

    from mvclam.jobs.embed import load_embed_job, run_embed

    rows = sample_rows(64)
    atoms = [Chem.MolFromSmiles(s).GetNumAtoms() for _, s in rows]
    done = [max(range(b, b + 8), key=lambda i: atoms[i]) for b in range(0, 64, 8)]
    full = write_csv(tmp_path / "full.csv", rows)
    part = write_csv(tmp_path / "part.csv", [rows[i] for i in done])

    def embed(inputs: list[Path], db: Path) -> None:
        settings = dict(views_batch_size=8, encoder_batch_size=8, commit_rows=8, progress=False, model=model)
        run_embed(load_embed_job(None, inputs=[str(p) for p in inputs], db=str(db), **settings))

    embed([full], tmp_path / "clean")
    embed([part], tmp_path / "resumed")  # what a killed run committed
    embed([full], tmp_path / "resumed")

    def tokens(db: Path) -> np.ndarray:
        table = lancedb.connect(str(db)).open_table("molecules").to_arrow().sort_by("id")
        return np.stack([np.stack(r) for r in table["tokens"].to_numpy(zero_copy_only=False)])

    np.testing.assert_array_equal(tokens(tmp_path / "resumed"), tokens(tmp_path / "clean"))


def test_embed_on_one_cpu_finishes_or_refuses(tmp_path, model):
    catalog = write_csv(tmp_path / "c.csv", sample_rows(4))
    args = rel_common.embed_args([catalog], tmp_path / "db", model, extra=["--num-cpus", "1"])
    child = rel_common.start_child(rel_common.mvclam_command(*args), tmp_path / "one_cpu.log")
    try:
        child.wait(120)  # a finished run, or an error saying it needs 2 CPUs; not a hang (20 s here)
        hung = False
    except subprocess.TimeoutExpired:
        hung = True
    finally:
        rel_common.kill_child_tree(child)
    assert not hung, "mvclam embed --num-cpus 1 still running after 120 s (deadlock)"


# --- 3. readers during writes, two jobs at once --------------------------------------------------


@pytest.fixture(scope="module")
def readers(child_process_items) -> dict:
    return record("readers", child_process_items["readers"].result())


def test_readers_answer_during_embed_caption_and_index_writes(readers):
    assert readers["errors"] == 0, readers["error_examples"]
    assert readers["mixed_versions"] == 0 and readers["duplicate_hits"] == 0
    assert (
        all(r["queries"] > 0 for r in readers["readers"].values())
        and len(readers["readers"]) == 1 + CI["readers"]["http_clients"]
    )
    assert readers["server_up"]
    writers = readers["writers"]  # the embeds fail today: test_embed_appends_to_a_table_that_has_captions
    assert writers["caption"]["rc"] == 0 and all(run["rc"] == 0 for run in writers["index"])
    assert {run["action"] for run in writers["index"]} >= {"built", "optimized"}
    final = readers["final"]
    assert final["duplicate_rows"] == 0 and final["caption_for_another_molecule"] == 0


def test_embed_appends_to_a_table_that_has_captions(tmp_path, model, local_ray):
    from mvclam.engine.store import ensure_caption_columns
    from mvclam.jobs.embed import load_embed_job, run_embed

    def embed(rows: list[tuple[str, str]]):
        catalog = write_csv(tmp_path / f"c{len(rows)}.csv", rows)
        return run_embed(
            load_embed_job(None, inputs=[str(catalog)], db=str(tmp_path / "db"), model=model, progress=False)
        )

    embed(sample_rows(3))
    ensure_caption_columns(lancedb.connect(str(tmp_path / "db")).open_table("molecules"))  # `mvclam caption`
    try:  # the nightly run: new molecules after a caption run
        rows: int | str = embed(sample_rows(6)).table_rows
    except ValueError as error:  # today: "Target schema's field names are not matching ..."
        rows = f"ValueError: {error}"[:120]
    assert rows == 6, rows


def test_two_embed_jobs_on_one_table_are_exact_or_the_second_is_refused(tmp_path, model, local_ray):
    """Two runs at once, interleaved as they are when they overlap: both open the table and read
    which ids are done, then each merge-inserts the same new ids. The merge of the second does not
    see the first's commit, so every id is inserted twice. (rel_readers.two_jobs runs two real
    `mvclam embed` processes at once: how many rows collide there depends on timing.)"""
    from mvclam.engine.store import CatalogStore, embeddings_schema
    from mvclam.jobs.embed import load_embed_job, run_embed

    catalog = write_csv(tmp_path / "c.csv", sample_rows(4))
    run_embed(
        load_embed_job(None, inputs=[str(catalog)], db=str(tmp_path / "src"), model=model, progress=False)
    )
    schema = embeddings_schema(16)
    rows = lancedb.connect(str(tmp_path / "src")).open_table("molecules").to_arrow().select(schema.names)
    db = tmp_path / "db"
    first = CatalogStore.open(db, "molecules", schema)
    try:
        second = CatalogStore.open(db, "molecules", schema)
    except Exception as error:  # refused: the fix may take a writer lock here
        assert "another" in str(error) or "lock" in str(error), error
        return
    first.reconcile("v")
    second.reconcile("v")
    first.write(rows, None)
    second.write(rows, None)
    ids = lancedb.connect(str(db)).open_table("molecules").to_arrow()["id"].to_pylist()
    assert len(ids) == len(set(ids)) == 4, f"{len(ids)} rows for {len(set(ids))} ids"


# --- 4. HTTP ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def http(root, model, local_ray) -> dict:
    settings = dict(CI["http"], smarts_length=0)  # the pathological SMARTS has its own test (last)
    return record("http", rel_http.run(root / "http", model=model, **settings))


def test_http_load_has_no_5xx_and_hostile_requests_get_short_json_4xx(http):
    load = http["load"]
    assert load["requests"] > 0 and load["5xx"] == 0 and load["connection_errors"] == 0, load
    assert load["status_counts"].get("200", 0) > 0
    hostile = http["hostile"]
    assert hostile["not_4xx_json"] == 0, hostile["problems"]
    assert hostile["accepted_problems"] == 0, hostile["accepted"]
    assert all(v["not_5xx"] for v in http["protocol_garbage"].values()), http["protocol_garbage"]
    assert http["slow_loris"]["health_status"] == 200
    assert http["slow_molecules"]["search_meanwhile_status"] == 200  # text search is not held up
    assert http["server_up"] and http["server_log_tracebacks"] == 0


def test_slow_concurrent_molecule_requests_get_a_4xx_not_a_5xx(http):
    assert http["slow_molecules"]["5xx"] == 0, http["slow_molecules"]


def test_a_pathological_smarts_is_answered_in_bounded_time(root, model, http):
    """After the other HTTP tests: the server it starts may stay busy for minutes (it is killed at
    the end)."""
    server = rel_http.Server(root / "http", root / "http" / "db", model)
    try:
        body = rel_http._j(
            {"query": "an aromatic hydrocarbon", "k": 10, "smarts": rel_http.pathological_smarts(32)}
        )
        started = time.perf_counter()
        try:
            status, _, _ = rel_http.request(server.port, "POST", "/api/search", body, timeout=8)
        except OSError:
            status = None
        assert status is not None and time.perf_counter() - started < 5, "SMARTS matching not bounded"
    finally:
        server.stop()


# --- 2. crashes, the campaign (last: it runs in a thread from the start, the others meanwhile) ----


@pytest.fixture(scope="module")
def crashes(child_process_items) -> dict:
    return record("crashes", child_process_items["crashes"].result())


def test_sigkills_of_embed_and_caption_runs_lose_nothing(crashes):
    assert crashes["group_kills"] == CI["crashes"]["kills"] and crashes["kills_mid_run"] >= 1
    assert crashes["rows_lost_by_kills"] == 0 and crashes["unreadable_after_kill"] == 0
    assert all(o["duplicate_rows"] == 0 for o in crashes["driver_kills"])
    assert crashes["final_rc"] == 0
    for key in ("comparison", "actor_comparison"):
        c = crashes[key]
        assert c["same_ids"] and c["same_errors"] and c["duplicate_ids"] == 0, c
        assert (c["rows"], c["error_rows"]) == (c["clean_rows"], c["clean_error_rows"])
        assert c["token_max_abs_diff"] <= 1e-5 and c["pooled_max_abs_diff"] <= 1e-5
    (actor,) = crashes["actor_kills"]
    assert actor["killed"] and actor["duplicate_rows"] == 0
    assert crashes["actor_final_rc"] in (None, 0)  # None: the run survived the kill and finished
    captions = crashes["captions"]
    rows = CI["crashes"]["caption_rows"]
    assert captions["final_rc"] == 0 and captions["kills_mid_run"] == 1, captions["kills"]
    assert captions["rows_after"] == captions["distinct_ids"] == captions["captioned"] == rows
    assert len(captions["caption_versions"]) == 1 and captions["captions_for_another_molecule"] == 0
