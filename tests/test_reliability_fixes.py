"""Regression tests for robustness bugs found by probing: damaged catalog files, the HTTP API's
filters, errors, limits and locking, `mvclam caption --input`, and the embed job's commits."""

from __future__ import annotations

import gzip
import http.client
import io
import json
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pytest

ray = pytest.importorskip("ray")
lancedb = pytest.importorskip("lancedb")

from conftest import running_server  # noqa: E402
from test_embed_job import job as embed_job  # noqa: E402
from test_embed_job import make_checkpoint, read_tables, sample_rows, write_csv  # noqa: E402

from mvclam.engine.io import read_catalog_file  # noqa: E402
from mvclam.engine.store import ERRORS_SCHEMA, PROPERTY_FIELDS, CatalogStore, embeddings_schema  # noqa: E402


def read_stream(path: Path, **kwargs: Any) -> list[dict[str, Any]]:
    """Rows of a catalog file read as the job reads it (Arrow decompresses a .gz on the fly)."""
    compression = "gzip" if path.name.endswith(".gz") else None
    if path.suffix == ".parquet":  # random access, as the job's datasource opens Parquet
        stream = pafs.LocalFileSystem().open_input_file(str(path))
    else:
        stream = pafs.LocalFileSystem().open_input_stream(str(path), compression=compression)
    blocks = list(read_catalog_file(stream, str(path), **kwargs))
    return pa.concat_tables(blocks).to_pylist() if blocks else []


# --- catalog readers ------------------------------------------------------------------------------


def test_csv_field_over_the_csv_limit_is_an_error_row_and_the_file_goes_on(tmp_path):
    path = tmp_path / "big.csv"
    path.write_text(f"id,smiles\na,CCO\nb,{'C' * 140_000}\nc,CCN\n")
    rows = read_stream(path)
    assert [r["id"] for r in rows] == ["a", "big.csv:2", "c"]
    assert rows[1]["input"] is None and "field larger than field limit" in rows[1]["read_error"]
    assert rows[0]["read_error"] is None and rows[2]["input"] == "CCN"


def test_truncated_and_fake_gz_keep_the_rows_before_the_damage(tmp_path):
    lines = [f"{'C' * (i % 20 + 1)} m{i}\n" for i in range(20_000)]
    compressed = gzip.compress("".join(lines).encode())
    truncated = tmp_path / "cut.smi.gz"
    truncated.write_bytes(compressed[: len(compressed) // 2])
    rows = read_stream(truncated, rows_per_block=500)
    *good, damage = rows
    assert len(good) > 9000 and all(r["read_error"] is None for r in good)
    # Every row read is a whole line of the file (the cut-off last line is not taken for a SMILES).
    assert [f"{r['input']} {r['id']}\n" for r in good] == lines[: len(good)]
    assert damage["id"] == f"cut.smi.gz:{len(good) + 1}:unreadable" and damage["input"] is None
    assert damage["source_row"] == len(good) + 1 and "truncated" in damage["read_error"].lower()

    fake = tmp_path / "fake.csv.gz"  # plain text named .gz
    fake.write_text("id,smiles\na,CCO\n")
    (row,) = read_stream(fake)
    assert row["id"] == "fake.csv.gz:1:unreadable" and "unreadable" in row["read_error"]

    from rdkit import Chem

    block = Chem.MolToMolBlock(Chem.MolFromSmiles("CCO"))
    sdf = "".join(f"m{i}\n{block.split(chr(10), 1)[1]}$$$$\n" for i in range(400)).encode()
    cut = tmp_path / "cut.sdf.gz"
    cut.write_bytes(gzip.compress(sdf)[:-40])
    rows = read_stream(cut)
    assert all(r["read_error"] is None and r["input"] == "CCO" for r in rows[:-1])
    assert len(rows) > 300 and rows[-1]["id"] == f"cut.sdf.gz:{len(rows)}:unreadable"


def test_unclosed_quote_is_an_error_row_and_later_rows_are_still_read(tmp_path):
    path = tmp_path / "quote.csv"
    path.write_text('id,smiles\na,CCO\nb,"CCN\nc,CCC\nd,CO\n')
    rows = read_stream(path)
    assert [(r["id"], r["input"]) for r in rows] == [
        ("a", "CCO"),
        ("quote.csv:2", None),
        ("c", "CCC"),
        ("d", "CO"),
    ]
    assert "unclosed quote" in rows[1]["read_error"] and "line 3" in rows[1]["read_error"]

    # A second stray quote closing the first must not swallow the rows between them either.
    path.write_text('id,smiles\na,CCO\nb,"CCN\nc,CCC\nd,CO"\ne,C\n')
    assert [r["id"] for r in read_stream(path)] == ["a", "quote.csv:2", "c", "d", "e"]
    # A genuine multi-line quoted field in another column stays one row.
    path.write_text('id,smiles,note\na,CCO,"two\nlines"\nb,CCN,x\n')
    assert [(r["id"], r["input"], r["read_error"]) for r in read_stream(path)] == [
        ("a", "CCO", None),
        ("b", "CCN", None),
    ]


def test_smi_cxsmiles_block_stays_with_the_smiles(tmp_path):
    path = tmp_path / "cx.smi"
    path.write_text("C[C@H](O)CC |&1:1| mol one\nCCO |$A;B;C$|\nCCN plain id\nCC |unclosed\n")
    rows = read_stream(path)
    assert [(r["input"], r["id"]) for r in rows] == [
        ("C[C@H](O)CC |&1:1|", "mol one"),
        ("CCO |$A;B;C$|", "cx.smi:2"),
        ("CCN", "plain id"),
        ("CC", "|unclosed"),
    ]
    from mvclam.engine.views import compute_views

    assert compute_views(rows[0]["input"]).canonical_smiles == "CC[C@H](C)O"


def test_lone_carriage_return_does_not_split_rows(tmp_path):
    smi = tmp_path / "cr.smi"
    smi.write_bytes(b"CCO\rethanol\r\nCCN amine\n")
    assert [(r["input"], r["id"], r["source_row"]) for r in read_stream(smi)] == [
        ("CCO", "ethanol", 1),
        ("CCN", "amine", 2),
    ]
    csv_path = tmp_path / "cr.csv"
    csv_path.write_bytes(b'id,smiles\r\na,CCO\rb,CCN\r\nc,"C\rC"\nd,CC\n')
    rows = read_stream(csv_path)
    assert [(r["id"], r["input"], r["read_error"]) for r in rows] == [
        ("a", "CCO\rb", None),  # one row: the \r is data (the SMILES then fails to parse)
        ("c", "C\rC", None),
        ("d", "CC", None),
    ]
    # Full-size hostile run (session 15): a line with a NUL and a lone \r was split in two, as the
    # NUL was the \r's stand-in. Now another stand-in is used and the NUL stays data.
    nul_path = tmp_path / "nul_cr.csv"
    nul_path.write_bytes(b"id,smiles,note\na\x00b,C\rC,x\ne,CC,\n")
    assert [(r["id"], r["input"]) for r in read_stream(nul_path)] == [("a\x00b", "C\rC"), ("e", "CC")]


# --- mvclam caption --input -----------------------------------------------------------------------


def test_caption_input_with_invalid_utf8_gives_a_row_error(tmp_path):
    from mvclam.engine.captioning.captioner import CaptionResult
    from mvclam.jobs.caption import read_smi, write_rows

    path = tmp_path / "in.smi"
    path.write_bytes(b"CCO ethanol\n\xff\xfe bad\nc1ccccc1 benzene\r\nCC\rethane\n")
    rows = read_smi(path)
    assert [(r.id, r.smiles) for r in rows] == [
        ("ethanol", "CCO"),
        ("2", ""),
        ("benzene", "c1ccccc1"),
        ("ethane", "CC"),
    ]
    assert rows[1].error and "UTF-8" in rows[1].error and rows[0].error is None

    from mvclam.jobs.caption import caption_rows

    seen: list[list[str]] = []

    class FakeCaptioning:
        def caption_smiles(self, smiles: list[str]) -> list[CaptionResult]:
            seen.append(list(smiles))
            return [CaptionResult(caption=f"about {s}") for s in smiles]

    results = caption_rows(FakeCaptioning(), rows)
    assert seen == [["CCO", "c1ccccc1", "CC"]]  # the unreadable line never reaches the model
    out = io.StringIO()
    write_rows(out, rows, results)
    table = [line.split("\t") for line in out.getvalue().splitlines()]
    assert table[2][:3] == ["2", "", ""] and "UTF-8" in table[2][3]
    # The last column is the JSON list of cited references: none for a captioner without a set.
    assert table[1] == ["ethanol", "CCO", "about CCO", "", "[]"] and table[3][2] == "about c1ccccc1"


# --- embed job: writer and end to end --------------------------------------------------------------


def _failed_batch(ids: list[str], schema: pa.Schema) -> pa.Table:
    n = len(ids)
    columns: dict[str, pa.Array] = {
        "id": pa.array(ids, pa.string()),
        "input": pa.array(["C1CC(("] * n, pa.string()),
        "source": pa.array(["x.smi"] * n, pa.string()),
        "source_row": pa.array(range(1, n + 1), pa.int64()),
        "status": pa.array(["failed"] * n, pa.string()),
        "error_code": pa.array(["parse_error"] * n, pa.string()),
        "error_reason": pa.array(["bad"] * n, pa.string()),
        "_views_s": pa.array([0.0] * n),
        "_encode_s": pa.array([0.0] * n),
        "_views_node": pa.array(["n"] * n, pa.string()),
        "_encode_node": pa.array(["n"] * n, pa.string()),
    }
    for f in schema:
        columns.setdefault(f.name, pa.nulls(n, f.type))
    return pa.table(columns)


def test_writer_commits_a_slow_stream_by_time():
    from mvclam.jobs.embed import EmbedJob, EmbedSummary, _Writer, load_embed_job

    assert load_embed_job(None, inputs=["a.smi"], db="d").commit_seconds == 30  # configs/embed.yaml
    with pytest.raises(ValueError, match="commit_seconds"):
        EmbedJob(inputs=["a.smi"], db="d", commit_seconds=-1)

    class Store:
        def __init__(self) -> None:
            self.writes: list[tuple[int, int]] = []

        def write(self, embedded: pa.Table, failed: pa.Table) -> None:
            self.writes.append((embedded.num_rows, failed.num_rows))

    schema = embeddings_schema(4)
    now = [0.0]
    store = Store()
    job = EmbedJob(inputs=["x.smi"], db="d", commit_rows=1000, commit_seconds=30, progress=False)
    writer = _Writer(store, schema, job, EmbedSummary(model_version="v"), clock=lambda: now[0])
    writer.add(_failed_batch(["a"], schema))
    now[0] = 10.0
    writer.add(_failed_batch(["b"], schema))
    assert store.writes == []  # 2 rows, 10 s: neither bound reached
    now[0] = 31.0
    writer.add(_failed_batch(["c"], schema))
    assert store.writes == [(0, 3)] and writer.summary.commits == 1
    now[0] = 40.0
    writer.add(_failed_batch(["d"], schema))
    assert store.writes == [(0, 3)]  # the clock restarts at each commit


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "a", 0)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_resume_compacts_commits_by_time_and_records_a_damaged_file(tmp_path, checkpoint, local_ray):
    from mvclam.jobs.embed import run_embed

    first_part = write_csv(tmp_path / "a.csv", sample_rows(10))
    second_part = write_csv(tmp_path / "b.csv", sample_rows(5, skip=10))
    fake = tmp_path / "broken.smi.gz"
    fake.write_text("CCO not gzip\n")
    # Far fewer rows than commit_rows: only the time bound (0 s: every batch) makes several commits.
    first = run_embed(
        embed_job(tmp_path, [first_part, fake], checkpoint, commit_rows=10**6, commit_seconds=0)
    )
    _, errors = read_tables(tmp_path / "db")
    assert first.embedded == 10 and first.commits >= 2
    assert errors.select(["id", "error_code"]).to_pylist() == [
        {"id": "broken.smi.gz:1:unreadable", "error_code": "read_error"}
    ]
    paths = [first_part, second_part, fake]
    assert run_embed(embed_job(tmp_path, paths, checkpoint)).embedded == 5  # a second, uncompacted run
    table = lancedb.connect(str(tmp_path / "db")).open_table("molecules")
    assert len(table.to_lance().get_fragments()) >= 2

    last = run_embed(embed_job(tmp_path, paths, checkpoint, optimize=True))
    assert last.commits == 0 and last.skipped == 16
    # Nothing new to write, yet the earlier runs' fragments are compacted.
    table = lancedb.connect(str(tmp_path / "db")).open_table("molecules")
    assert len(table.to_lance().get_fragments()) == 1 and table.count_rows() == 15


def test_failed_job_leaves_no_empty_tables(tmp_path, checkpoint, local_ray):
    from mvclam.jobs.embed import run_embed

    bad = tmp_path / "nosmiles.csv"
    bad.write_text("id,name\na,b\n")
    with pytest.raises(Exception, match="no SMILES column"):
        run_embed(embed_job(tmp_path, [bad], checkpoint))
    assert list(lancedb.connect(str(tmp_path / "db")).list_tables().tables) == []


def one_error_row() -> pa.Table:
    """A row of the errors table."""
    return pa.table(
        {
            "id": ["x"],
            "input": ["C("],
            "error_code": ["parse_error"],
            "reason": ["bad"],
            "source": ["f"],
            "source_row": [1],
            "model_version": ["v"],
            "failed_at": pa.array([0], pa.timestamp("us", tz="UTC")),
        }
    ).cast(ERRORS_SCHEMA)


def test_optimize_retries_when_a_caption_commit_preempts_the_compaction(tmp_path):
    """CI found `mvclam index` failing while a caption job committed: Lance lets the update win
    and the compaction fails with a retryable conflict. A handle opened before the caption commit
    reproduces it deterministically."""
    import lancedb

    from mvclam.engine.store import optimize_table

    def rows(start: int) -> pa.Table:
        ids = [f"m{i}" for i in range(start, start + 4)]
        return pa.table({"id": ids, "caption": pa.array([None] * 4, pa.string())})

    table = lancedb.connect(str(tmp_path)).create_table("molecules", rows(0))
    for start in (4, 8):
        table.add(rows(start))  # three small fragments to compact
    # Opened before the caption commit, as `mvclam index` is during a caption run.
    plain, indexer = (lancedb.connect(str(tmp_path)).open_table("molecules") for _ in range(2))
    captions = pa.table({"id": ["m1", "m5"], "caption": ["an acid", "a base"]})
    table.merge_insert("id").when_matched_update_all().execute(captions)
    with pytest.raises(RuntimeError, match="Retryable commit conflict"):
        plain.optimize()  # the bug
    assert optimize_table(indexer)
    compacted = lancedb.connect(str(tmp_path)).open_table("molecules")
    assert len(compacted.to_lance().get_fragments()) == 1 and compacted.count_rows() == 12
    stored = dict(zip(*compacted.to_arrow().select(["id", "caption"]).to_pydict().values(), strict=True))
    assert stored["m1"] == "an acid" and stored["m5"] == "a base"  # the caption commit kept


def test_store_keeps_tables_that_hold_rows(tmp_path):
    store = CatalogStore.open(tmp_path / "db", "t", embeddings_schema(4))
    errors = one_error_row()
    store.write(None, errors)
    store.discard_if_unused()
    assert sorted(lancedb.connect(str(tmp_path / "db")).list_tables().tables) == ["t", "t_errors"]


def test_a_write_the_disk_refuses_names_the_table_without_lance_internals(tmp_path, monkeypatch):
    from mvclam.engine.store import CatalogStorageError

    store = CatalogStore.open(tmp_path / "db", "t", embeddings_schema(4))
    errors = one_error_row()
    # what Lance raised on the full tmpfs of the fault campaign
    lance_message = (
        "LanceError(IO): Generic LocalFileSystem error: Unable to write to file at "
        f"{tmp_path}/db/t_errors.lance/data/x.lance: No space left on device (os error 28), "
        "/root/.cargo/registry/src/index.crates.io-6f17d22bba15001f/lance-io-0.31.0/src/local.rs:137:38"
    )

    def raising(error: Exception):
        def merge_insert(*_args):
            raise error

        return merge_insert

    monkeypatch.setattr(store.errors, "merge_insert", raising(OSError(lance_message)))
    with pytest.raises(CatalogStorageError) as raised:
        store.write(None, errors)
    message = str(raised.value)
    assert message.startswith("cannot write table 't_errors' (database 'db'): no space left on device")
    assert "resumes" in message and ".rs" not in message and str(tmp_path) not in message
    monkeypatch.setattr(store.errors, "merge_insert", raising(ValueError("bad")))
    with pytest.raises(ValueError, match=r"^bad$"):  # not a storage refusal: passes unchanged
        store.write(None, errors)
    store.close()


# --- HTTP API -------------------------------------------------------------------------------------


def nested_smiles(atoms: int) -> str:
    smiles = "C"
    for _ in range(atoms - 1):
        smiles = f"C({smiles})"
    return smiles


SLOW_SMILES = "CCCCCCCCCCCCO"  # made slow by the lock test only


@pytest.fixture(scope="module")
def searcher(tmp_path_factory, checkpoint):
    """A small catalog written by the job's own stages and writer, without Ray."""
    from mvclam.engine.search import CatalogSearcher
    from mvclam.jobs.embed import EmbedJob, EmbedSummary, _prepare_model, _view_config, _Writer
    from mvclam.jobs.embed_stages import EncoderActor, compute_view_rows

    root = tmp_path_factory.mktemp("serve")
    source = write_csv(root / "catalog.csv", [*sample_rows(24), ("slow", SLOW_SMILES)])
    job = EmbedJob(inputs=[str(source)], db=str(root / "db"), model=str(checkpoint), progress=False)
    blob, name, version, dim = _prepare_model(job, root)
    schema = embeddings_schema(dim)
    store = CatalogStore.open(job.db, job.table, schema)
    writer = _Writer(store, schema, job, EmbedSummary(model_name=name, model_version=version))
    encoder = EncoderActor(blob)
    with open(source, "rb") as handle:
        for block in read_catalog_file(handle, str(source), rows_per_block=32):
            writer.add(encoder(compute_view_rows(block, None, _view_config(job))))
    writer.flush()
    return CatalogSearcher(job.db, job.table, checkpoint=checkpoint)


@pytest.fixture(scope="module")
def server(searcher):
    from mvclam.jobs.serve import create_app

    with running_server(create_app(searcher), log_level="critical") as port:
        yield port


def post(port: int, path: str, body: dict | bytes, timeout: float = 60) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("POST", path, body=data, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        assert response.getheader("content-type", "").startswith("application/json")
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_filter_columns_are_the_property_columns_and_all_indexed():
    from mvclam.engine.search.index import SCALAR_INDEXES
    from mvclam.jobs.serve import FILTER_COLUMNS, PropertyFilter

    assert tuple(f.name for f in PROPERTY_FIELDS) == FILTER_COLUMNS
    assert set(FILTER_COLUMNS) <= set(SCALAR_INDEXES)
    sql = {
        (op, v): PropertyFilter(column="hbd", op=op, value=v).sql()
        for op in ("<", "<=", ">", ">=", "=")
        for v in (5, 4.5)
    }
    assert sql == {
        ("<", 5): "hbd <= 4",
        ("<", 4.5): "hbd <= 4",
        ("<=", 5): "hbd <= 5",
        ("<=", 4.5): "hbd <= 4",
        (">", 5): "hbd >= 6",
        (">", 4.5): "hbd >= 5",
        (">=", 5): "hbd >= 5",
        (">=", 4.5): "hbd >= 5",
        ("=", 5): "hbd = 5",
        ("=", 4.5): "FALSE",
    }
    assert PropertyFilter(column="heavy_atoms", op="<=", value=1e6).sql() == "heavy_atoms <= 32767"
    assert PropertyFilter(column="mw", op="<", value=400).sql() == "mw < 400.0"


def test_integer_column_filters_work_with_exact_meaning(server, searcher):
    def ids(*filters: tuple[str, str, float]) -> set[str]:
        body = {"query": "an acid", "k": 100, "depict": False}
        body["filters"] = [{"column": c, "op": o, "value": v} for c, o, v in filters]
        status, result = post(server, "/api/search", body)
        assert status == 200, result
        return {r["id"] for r in result["results"]}

    everything = ids()
    few_donors = ids(("hbd", "<=", 5))
    assert few_donors and few_donors <= everything
    hbd = {h.id: h.columns["hbd"] for h in searcher.search_text("an acid", k=100)}
    assert few_donors == {i for i, v in hbd.items() if v <= 5}
    assert ids(("hbd", "<", 1.5)) == ids(("hbd", "<=", 1)) == {i for i, v in hbd.items() if v <= 1}
    assert ids(("hbd", ">", 0.5)) == ids(("hbd", ">=", 1))
    assert ids(("hbd", "=", 0.5)) == set()
    for column in ("hba", "rotatable_bonds", "heavy_atoms"):
        assert ids((column, "<=", 1e6), (column, ">=", -1e6)) == everything


def test_errors_are_short_json_without_internals(server, searcher, monkeypatch):
    from mvclam.engine.search import SearchError

    internal = (
        f"invalid filter \"(model_version = '{searcher.model.model_version}') AND (hbd <= 5.0)\": "
        "Invalid user input: /home/runner/work/lance/lance/rust/lance-datafusion/src/logical_expr.rs:23:88"
    )

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise SearchError(internal)

    monkeypatch.setattr(searcher, "search_text", refuse)
    status, error = post(server, "/api/search", {"query": "acid"})
    assert status == 400 and error == {"detail": "invalid filter"}

    def crash(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("/secret/path.rs: boom")

    monkeypatch.setattr(searcher, "search_text", crash)
    assert post(server, "/api/search", {"query": "acid"}) == (500, {"detail": "internal error"})

    status, error = post(server, "/api/search", {"query": "x" * 501})
    assert status == 422 and isinstance(error["detail"], str) and "query" in error["detail"]
    assert len(error["detail"]) <= 300 and "xxxx" not in error["detail"]


def test_lone_surrogates_and_non_finite_numbers_are_4xx(server):
    for body in (
        b'{"query": "\\ud800 x"}',
        b'{"query": "acid", "smarts": "\\udfff"}',
        b'{"query": "acid", "filters": [{"column": "mw", "op": "<", "value": NaN}]}',
        b'{"query": "acid", "filters": [{"column": "mw", "op": "<", "value": Infinity}]}',
        b'{"query": "acid", "filters": [{"column": "hbd", "op": ">", "value": -Infinity}]}',
        b'{"query": "acid", "k": true}',
        b'{"query": "acid", "filters": [{"column": "mw", "op": "<", "value": true}]}',
        b'{"query": "acid", "k": 3.0}',
        b'{"query": "acid", "rerank": "yes"}',
        b"{not json",
    ):
        status, error = post(server, "/api/search", body)
        assert status == 422 and isinstance(error["detail"], str), (body, status, error)
    status, error = post(server, "/api/similar", b'{"smiles": "C\\ud800"}')
    assert status == 422 and isinstance(error["detail"], str)


def test_request_body_limit_before_parsing(server):
    connection = http.client.HTTPConnection("127.0.0.1", server, timeout=20)
    try:  # a huge declared body is refused before a byte of it is read
        connection.putrequest("POST", "/api/search")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(100 * 1024 * 1024))
        connection.endheaders()
        response = connection.getresponse()
        assert response.status == 413 and "too large" in json.loads(response.read())["detail"]
    finally:
        connection.close()
    connection = http.client.HTTPConnection("127.0.0.1", server, timeout=20)
    try:  # a chunked body declares no length: the received bytes are counted
        chunks = iter([b'{"query": "', *[b"x" * 8192] * 12, b'"}'])
        connection.request(
            "POST",
            "/api/search",
            body=chunks,
            headers={"Content-Type": "application/json"},
            encode_chunked=True,
        )
        response = connection.getresponse()
        assert response.status == 413 and "too large" in json.loads(response.read())["detail"]
    finally:
        connection.close()
    assert post(server, "/api/search", {"query": "acid", "k": 2})[0] == 200


def test_request_molecules_are_bounded(server, searcher):
    started = time.perf_counter()
    status, error = post(server, "/api/similar", {"smiles": nested_smiles(151), "k": 3})
    assert status == 400 and "too_many_atoms" in error["detail"]
    assert time.perf_counter() - started < 10  # refused before the 3D step (17-56 s for this one)
    status, similar = post(server, "/api/similar", {"smiles": "CC(=O)Oc1ccccc1C(=O)O", "k": 3})
    assert status == 200 and len(similar["results"]) == 3

    from mvclam.engine.views import ViewConfig
    from mvclam.jobs.serve import request_view_config

    bounded = request_view_config(ViewConfig(max_atoms=256, embed_timeout_s=20), 100, 5)
    assert (bounded.max_atoms, bounded.embed_timeout_s) == (100, 5)
    assert request_view_config(ViewConfig(embed_timeout_s=0), 100, 5).embed_timeout_s == 5


def hold_views_of_slow_smiles(monkeypatch) -> tuple[threading.Event, threading.Event]:
    """Makes the views of SLOW_SMILES wait (up to 60 s) until `release` is set; `entered` is set
    when they start."""
    from mvclam.engine.views import molecule_views

    entered, release = threading.Event(), threading.Event()
    original = molecule_views._compute_views

    def slow(mol: Any, config: Any) -> Any:
        if mol == SLOW_SMILES:
            entered.set()
            release.wait(60)
        return original(mol, config)

    monkeypatch.setattr(molecule_views, "_compute_views", slow)
    return entered, release


def test_molecule_views_do_not_block_text_search(server, monkeypatch):
    entered, release = hold_views_of_slow_smiles(monkeypatch)
    outcome: dict[str, Any] = {}
    thread = threading.Thread(
        target=lambda: outcome.update(similar=post(server, "/api/similar", {"smiles": SLOW_SMILES, "k": 2}))
    )
    thread.start()
    try:
        assert entered.wait(30)
        status, _ = post(server, "/api/search", {"query": "an acid", "k": 2}, timeout=15)
        assert status == 200 and thread.is_alive()  # answered while the molecule is still in RDKit
    finally:
        release.set()
        thread.join(60)
    assert outcome["similar"][0] == 200


def test_cli_passes_serve_limits_and_commit_seconds(monkeypatch):
    """The service limits and the time-bounded commit are settable from the command line."""
    import mvclam.jobs.serve as serve_module
    from mvclam.jobs.cli import build_parser

    seen: dict[str, Any] = {}
    monkeypatch.setattr(serve_module, "serve", lambda *args, **kwargs: seen.update(kwargs))
    args = build_parser().parse_args(
        [
            "serve",
            "--db",
            "d",
            "--max-body-bytes",
            "1000",
            "--max-request-atoms",
            "40",
            "--request-embed-timeout",
            "2",
            "--molecule-workers",
            "2",
            "--molecule-wait",
            "5",
        ]
    )
    assert args.handler(args) == 0
    assert (seen["max_body_bytes"], seen["max_request_atoms"], seen["request_embed_timeout_s"]) == (
        1000,
        40,
        2,
    )
    assert (seen["molecule_workers"], seen["molecule_wait_s"]) == (2, 5.0)

    args = build_parser().parse_args(["embed", "in.csv", "--db", "d", "--commit-seconds", "7.5"])
    assert args.commit_seconds == 7.5
    from mvclam.jobs.embed import load_embed_job

    fields = {"inputs": args.inputs, "db": args.db, "commit_seconds": args.commit_seconds}
    assert load_embed_job(None, **fields).commit_seconds == 7.5


def test_open_catalog_table_names_a_missing_table_and_keeps_other_errors(tmp_path):
    from mvclam.engine.store import CatalogTableNotFound, open_catalog_table

    db = lancedb.connect(str(tmp_path / "db"))
    for i in range(12):  # more than one page of LanceDB's table_names()
        db.create_table(f"t{i:02d}", pa.table({"id": ["a"]}))
    assert open_catalog_table(tmp_path / "db", "t11").count_rows() == 1
    with pytest.raises(CatalogTableNotFound, match=r"no table 'absent'.*t11"):
        open_catalog_table(tmp_path / "db", "absent")


# --- issue 21: the bugs the reliability suite found (docs/reliability.md, "Bugs found") ----------
# Fast versions of the suite's regression tests that need a whole campaign (tests/test_reliability_suite.py).


def test_garbage_after_a_smiles_is_a_parse_error_and_cxsmiles_still_parses():
    from mvclam.engine.views import ViewError, ViewErrorCode, compute_views

    for smiles in ("CCO\ufffd", "CCOü", "C" + "é" * 30, "CCO\x01", "CCO junk", "CCO\xa0x", "CCO |$A$| x"):
        with pytest.raises(ViewError) as caught:
            compute_views(smiles)
        assert caught.value.code == ViewErrorCode.PARSE_ERROR and "position" in caught.value.reason, smiles
    assert compute_views("C[C@H](O)CC |&1:1|").canonical_smiles == "CC[C@H](C)O"
    assert compute_views("  CCO\t|$A;B;C$|\n").canonical_smiles == "CCO"


def test_rdkit_log_cut_inside_a_utf8_character_still_gives_a_parse_error():
    from mvclam.engine.views import ViewErrorCode
    from mvclam.engine.views.standardize import _explain_parse_failure

    # RDKit echoes the input cut at a byte count: reading its log raised UnicodeDecodeError.
    error = _explain_parse_failure("C(" + "é" * 200)
    assert error.code == ViewErrorCode.PARSE_ERROR


def test_damaged_or_wrongly_typed_parquet_gives_rows_or_names_the_file(tmp_path):
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table({"id": ["a", "b"], "smiles": pa.array([b"CCO", b"\xff\xfe"], pa.binary())}),
        tmp_path / "binary.parquet",
    )
    rows = read_stream(tmp_path / "binary.parquet")
    assert [(r["id"], r["input"]) for r in rows] == [("a", "CCO"), ("b", "\ufffd\ufffd")]
    for name, table, column in (
        ("list.parquet", pa.table({"id": ["a"], "smiles": [["CCO"]]}), "smiles"),
        ("struct.parquet", pa.table({"id": [{"x": 1}], "smiles": ["CCO"]}), "id"),
    ):
        pq.write_table(table, tmp_path / name)
        with pytest.raises(ValueError, match=rf"{name}: column '{column}' is .*expected strings"):
            read_stream(tmp_path / name)
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "smiles": ["CCO", "CCN"]}), good)
    (tmp_path / "cut.parquet").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (tmp_path / "fake.parquet").write_bytes(b"id,smiles\na,CCO\n")
    for name in ("cut.parquet", "fake.parquet"):
        (row,) = read_stream(tmp_path / name)
        assert row["id"] == f"{name}:1:unreadable" and row["input"] is None and "Parquet" in row["read_error"]


def test_byte_order_mark_is_dropped_in_every_text_format(tmp_path):
    (tmp_path / "bom.smi").write_bytes("\ufeffCCO ethanol\n".encode())
    (tmp_path / "bom.tsv").write_bytes("\ufeffsmiles\tid\nCCO\tm1\n".encode())
    assert [(r["input"], r["id"]) for r in read_stream(tmp_path / "bom.smi")] == [("CCO", "ethanol")]
    assert [(r["input"], r["id"]) for r in read_stream(tmp_path / "bom.tsv")] == [("CCO", "m1")]


def test_encoder_stores_the_same_tokens_whatever_else_is_in_the_batch(tmp_path, checkpoint):
    """What a resume does: the rows done before a kill are skipped, so the others are encoded in
    batches of other molecules (here without the largest ones: another padding length)."""
    import numpy as np
    from rdkit import Chem

    from mvclam.jobs.embed import EmbedJob, _prepare_model, _view_config
    from mvclam.jobs.embed_stages import EncoderActor, compute_view_rows

    rows = sample_rows(16)
    source = write_csv(tmp_path / "c.csv", rows)
    job = EmbedJob(inputs=[str(source)], db=str(tmp_path / "db"), model=str(checkpoint), progress=False)
    blob, *_ = _prepare_model(job, tmp_path)
    with open(source, "rb") as handle:
        (block,) = read_catalog_file(handle, str(source), rows_per_block=64)
    staged = compute_view_rows(block, None, _view_config(job))
    encoder = EncoderActor(blob, batch_size=16)
    atoms = [Chem.MolFromSmiles(s).GetNumAtoms() for _, s in rows]
    keep = sorted(sorted(range(16), key=lambda i: atoms[i])[:12])

    def tokens(table: pa.Table) -> np.ndarray:
        return np.stack([np.stack(r) for r in table["tokens"].to_numpy(zero_copy_only=False)])

    clean = tokens(encoder(staged))
    resumed = tokens(encoder(staged.take(pa.array(keep))))
    np.testing.assert_array_equal(resumed, clean[keep])
    alone = tokens(encoder(staged.take(pa.array([keep[0]]))))  # a row retried on its own
    np.testing.assert_array_equal(alone[0], clean[keep[0]])


def test_one_writer_per_table_and_readers_need_no_lock(tmp_path):
    import subprocess
    import sys

    from mvclam.engine.store import CatalogTableLocked, ensure_caption_columns, open_catalog_table

    db, schema = tmp_path / "db", embeddings_schema(4)
    first = CatalogStore.open(db, "t", schema)
    with pytest.raises(CatalogTableLocked, match=r"table 't' in .* is being written by another job"):
        CatalogStore.open(db, "t", schema)
    CatalogStore.open(db, "u", schema).close()  # another table has its own lock
    ensure_caption_columns(open_catalog_table(db, "t"))  # readers and `mvclam caption` take none
    assert open_catalog_table(db, "t").count_rows() == 0
    first.close()
    with CatalogStore.open(db, "t", schema):  # released by close
        pass

    holder = (
        "import sys; from mvclam.engine.store import CatalogStore, embeddings_schema; "
        f"s = CatalogStore.open({str(db)!r}, 't', embeddings_schema(4)); print('held', flush=True); sys.stdin.read()"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(CatalogTableLocked, match=r"pid \d+"):  # another process: the holder is named
            CatalogStore.open(db, "t", schema)
    finally:
        child.kill()  # a killed job leaves no stale lock: the OS drops it with the process
        child.wait(30)
    CatalogStore.open(db, "t", schema).close()


def test_pipeline_cpus_fit_a_one_cpu_ray():
    from mvclam.jobs.embed import EmbedJob, fit_cpus

    job = EmbedJob(inputs=["a.smi"], db="d")
    assert fit_cpus(job, 1) == (0.5, 0.5)  # an encoder holding the only CPU starved the views tasks
    assert fit_cpus(job, 2) == fit_cpus(job, 16) == (1.0, 1.0)
    encoder_cpus, views_cpus = fit_cpus(EmbedJob(inputs=["a.smi"], db="d", encoders=2), 2)
    assert 2 * encoder_cpus + views_cpus == pytest.approx(2) and encoder_cpus == views_cpus


def test_caption_actors_leave_a_read_task_room_on_a_small_ray():
    from mvclam.jobs.caption_table import fit_caption_cpus

    # two 1-CPU actors held both CPUs of a 2-core machine: the read task waited forever
    actor_cpus, read_cpus = fit_caption_cpus(2, 1.0, 2)
    assert 2 * actor_cpus + read_cpus == pytest.approx(2) and actor_cpus == read_cpus
    assert fit_caption_cpus(1, 1.0, 2) == fit_caption_cpus(2, 1.0, 16) == (1.0, 1.0)


def _catalog_copy(searcher: Any, tmp_path: Path) -> tuple[Path, int]:
    """A copy of the searcher's catalog with one more version (3 more rows): (db, the version before)."""
    import shutil

    import lance

    db = tmp_path / "db"
    shutil.copytree(Path(searcher.table.uri).parent, db)
    table = lancedb.connect(str(db)).open_table("molecules")
    extra = table.to_arrow().slice(0, 3)
    table.add(extra.set_column(extra.schema.get_field_index("id"), "id", pa.array(["x1", "x2", "x3"])))
    versions = sorted(v["version"] for v in lance.dataset(str(db / "molecules.lance")).versions())
    return db, versions[-2]


def _damage(db: Path, mode: str, previous: int) -> None:
    """Cuts the data file the latest version added in half, or overwrites its manifest."""
    import os

    import lance

    uri = str(db / "molecules.lance")
    if mode == "data":
        old = {f.data_files()[0].path for f in lance.dataset(uri, version=previous).get_fragments()}
        (new,) = [
            f.data_files()[0].path
            for f in lance.dataset(uri).get_fragments()
            if f.data_files()[0].path not in old
        ]
        target = Path(uri) / "data" / new
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    else:
        target = min((Path(uri) / "_versions").glob("*.manifest"))  # V2 names: the latest is the smallest
        data = bytearray(target.read_bytes())
        data[len(data) // 2 : len(data) // 2 + 32] = os.urandom(32)
        target.write_bytes(bytes(data))


@pytest.mark.parametrize("mode", ["data", "manifest"])
def test_damaged_table_errors_name_the_table_and_how_to_restore(tmp_path, searcher, mode):
    from mvclam.engine.search import CatalogSearcher
    from mvclam.engine.store import CatalogTableDamaged

    db, previous = _catalog_copy(searcher, tmp_path)
    _damage(db, mode, previous)
    schema = searcher.table.schema
    messages = []
    if mode == "data":  # the table opens; reading it fails
        store = CatalogStore.open(db, "molecules", schema)
        with pytest.raises(CatalogTableDamaged) as caught:
            store.reconcile(searcher.model.model_version)
        store.close()
        assert f"restore({previous})" in str(caught.value) and "data file" in str(caught.value)
    else:
        with pytest.raises(CatalogTableDamaged) as caught:
            CatalogStore.open(db, "molecules", schema)
        assert "manifest" in str(caught.value) and "molecules.lance/_versions/" in str(caught.value)
    messages.append(str(caught.value))
    with pytest.raises(CatalogTableDamaged) as caught:
        CatalogSearcher(db, "molecules", model=searcher.model)
    messages.append(str(caught.value))
    for message in messages:
        assert message.startswith("table 'molecules' (database 'db') is damaged"), message
        assert ".rs:" not in message and str(tmp_path) not in message and "LanceError" not in message


def test_storage_fault_is_a_503_and_a_bad_filter_still_a_400(tmp_path, searcher):
    from mvclam.engine.search import CatalogSearcher, SearchError
    from mvclam.engine.store import CatalogStorageError
    from mvclam.jobs.serve import create_app

    db, previous = _catalog_copy(searcher, tmp_path)
    live = CatalogSearcher(db, "molecules", model=searcher.model, refresh_seconds=0)  # a running service
    assert len(live.search_text("an acid", k=3)) == 3
    _damage(db, "data", previous)
    for where in (None, "mw < 400"):  # a storage fault, with or without the client's filter
        with pytest.raises(CatalogStorageError, match="damaged"):
            live.search_text("an acid", k=3, where=where)
    with pytest.raises(SearchError, match="invalid filter"):
        live.search_text("an acid", k=3, where="no_such_column < 3")
    with running_server(create_app(live), log_level="critical") as port:
        assert post(port, "/api/search", {"query": "an acid", "k": 3}) == (
            503,
            {"detail": "storage error: the catalog table cannot be read"},
        )


def test_busy_molecule_slots_answer_429_with_retry_after(searcher, monkeypatch):
    from mvclam.jobs.serve import create_app

    entered, release = hold_views_of_slow_smiles(monkeypatch)
    with running_server(create_app(searcher, molecule_wait_s=0.2), log_level="critical") as port:
        held = threading.Thread(target=post, args=(port, "/api/similar", {"smiles": SLOW_SMILES, "k": 2}))
        held.start()
        try:
            assert entered.wait(30)
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            body = json.dumps({"smiles": "CCO", "k": 2})
            connection.request(
                "POST", "/api/similar", body=body, headers={"Content-Type": "application/json"}
            )
            response = connection.getresponse()
            assert response.status == 429 and response.getheader("Retry-After", "").isdigit()
            assert "busy" in json.loads(response.read())["detail"]
            connection.close()
        finally:
            release.set()
            held.join(60)


SHEET = (  # a 70-atom polycyclic aromatic sheet (benchmarks/reliability/rel_http.py hex_sheet_smiles)
    "c1cc2cc3cc4cc5ccc6ccc7c8ccc9ccc%10cc%11cc%12cc%13cccc%14c%15ccc%16c(c1)c2c1c3c2c4c3c5c6c7c4c5c8c9"
    "c%10c6c%11c7c%12c(c%13%14)c8c%15c%16c1c1c2c(c34)c(c65)c7c81"
)


def chain_smarts(atoms: int) -> str:
    """`*~*~…~[U]`: matches nothing, after enumerating the sheet's paths (seconds from ~24 atoms)."""
    return "*" + "~*" * (atoms - 2) + "~[U]"


def test_smarts_over_the_limits_is_refused_before_matching(server):
    from mvclam.engine.search.smarts import MAX_SMARTS_ATOMS, SmartsTooComplex, compile_smarts

    assert compile_smarts(chain_smarts(MAX_SMARTS_ATOMS)) is not None
    with pytest.raises(SmartsTooComplex, match="atoms"):
        compile_smarts(chain_smarts(MAX_SMARTS_ATOMS + 1))
    with pytest.raises(SmartsTooComplex, match="nested 4 deep"):
        compile_smarts("[$([$([$([$(C)])])])]")
    status, error = post(
        server, "/api/search", {"query": "an acid", "smarts": chain_smarts(MAX_SMARTS_ATOMS + 1)}
    )
    assert status == 422 and error["detail"].startswith("SMARTS too complex")


def test_a_stuck_smarts_match_is_killed_at_its_deadline():
    from mvclam.engine.search.smarts import SmartsTimeout, SmartsWorker

    worker = SmartsWorker()
    try:
        started = time.monotonic()
        with pytest.raises(SmartsTimeout):  # one RDKit call of seconds to minutes
            worker.match(chain_smarts(28), [SHEET], started + 0.5)
        assert time.monotonic() - started < 3
        # A fresh worker answers the next request.
        assert worker.match("C(=O)O", ["CC(=O)O", "CCO", None], time.monotonic() + 30) == [True, False, False]
    finally:
        worker.close()


def test_smarts_matching_leaves_the_model_lock_and_times_out_as_408(searcher, monkeypatch):
    from mvclam.engine.search.smarts import SmartsTimeout, SmartsWorker
    from mvclam.jobs.serve import create_app

    entered, release = threading.Event(), threading.Event()

    def stuck(self: Any, smarts: str, smiles: Any, deadline: float | None) -> list[bool]:
        entered.set()
        release.wait(60)
        raise SmartsTimeout("SMARTS matching took longer than 2.0 s")

    monkeypatch.setattr(SmartsWorker, "match", stuck)
    outcome: dict[str, Any] = {}
    with running_server(create_app(searcher), log_level="critical") as port:
        body = {"query": "an acid", "k": 2, "smarts": "C(=O)O"}
        thread = threading.Thread(target=lambda: outcome.update(smarts=post(port, "/api/search", body)))
        thread.start()
        try:
            assert entered.wait(30)
            status, _ = post(port, "/api/search", {"query": "an acid", "k": 2}, timeout=15)
            assert status == 200 and thread.is_alive()  # answered while the SMARTS is being matched
        finally:
            release.set()
            thread.join(60)
    status, error = outcome["smarts"]
    assert status == 408 and error["detail"].startswith("SMARTS matching took longer than")
