"""`mvclam embed`: a compound catalog -> a LanceDB table of multi-view embeddings, on Ray Data.

Pipeline (Arrow tables end to end, nothing collected on the driver):

    read (CatalogDatasource, 0-CPU I/O tasks, one file per task, small blocks)
      -> views (map_batches tasks, `views_cpus` each): skip done ids, standardise, 2D/3D views,
         RDKit properties
      -> encoder (map_batches with EncoderActor on an ActorPoolStrategy of `encoders` actors,
         `encoder_cpus` and, where the cluster has GPUs, one GPU each)
      -> writer (the driver, streaming `iter_batches`): merge-insert into LanceDB every
         `commit_rows` rows, or sooner once `commit_seconds` have passed since the last commit.

Why the driver writes: one writer means no concurrent Lance commits to retry, and every chunk
is one atomic commit, so a killed run keeps all chunks committed before the kill. One job per
table: the run holds the table's writer lock (local databases), so a second `mvclam embed` into
it fails at once instead of inserting the same new ids again. Writes cost
microseconds per row against tens of milliseconds of views + encoding, so one writer keeps up.
The read tasks take no CPU and the writer runs outside Ray's scheduler, so actors and views tasks
can take every CPU without starving them.

Determinism: rows reach the writer in input order (`preserve_order`), so when an id occurs more
than once the first occurrence (file order, then row order) is stored and later ones are counted
as duplicates, on every run and across kills.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mvclam.engine.io import resolve_inputs
from mvclam.engine.store import CatalogStore, embedded_rows, embeddings_schema, error_rows
from mvclam.jobs.common import (
    actor_gpus,
    checkpoint_blob,
    cpu_fit_scale,
    init_ray,
    load_job_config,
    local_ray_cpus,
)
from mvclam.jobs.embed_io import CatalogDatasource
from mvclam.jobs.embed_stages import (
    STATUS_FAILED,
    STATUS_OK,
    STATUS_SKIPPED,
    EncoderActor,
    compute_view_rows,
)


@dataclass
class EmbedJob:
    """Everything one run needs; `configs/embed.yaml` holds the defaults (see `load_embed_job`)."""

    inputs: list[str]
    db: str
    table: str = "molecules"
    errors_table: str | None = None  # default: "<table>_errors"
    model: str | None = None  # checkpoint directory; None: the shipped model; "fresh": a fresh model
    model_config: str | None = None  # config of a fresh model (seeded by `seed`); implies a fresh model
    model_overrides: list[str] = field(default_factory=list)
    seed: int = 0  # torch seed of a fresh model: same seed + config -> same weights -> same version
    smiles_column: str | None = None
    id_column: str | None = None
    token_dtype: str = "float32"
    views_batch_size: int = 128  # rows per read block and per views task batch
    encoder_batch_size: int = 64  # rows per encoder call (map_batches batch_size)
    encoders: int = 1  # encoder actors
    encoder_cpus: float = 1.0
    encoder_gpus: float | None = None  # None: 1 per actor when the cluster has GPUs, else 0
    views_cpus: float = 1.0
    views_workers: int | None = None  # cap on concurrent views tasks (None: as many as CPUs allow)
    commit_rows: int = 1024  # rows per LanceDB commit: the progress a kill can lose at most
    # ... or sooner: rows are also committed once this long has passed since the last commit, since
    # 1024 rows can take minutes (0: commit every batch).
    commit_seconds: float = 30.0
    address: str | None = None  # Ray cluster; None: RAY_ADDRESS, else a local Ray instance
    num_cpus: int | None = None  # CPUs of a local Ray instance (None: all)
    optimize: bool = True  # compact the tables after the run
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.inputs, str):
            self.inputs = [self.inputs]
        for name in ("views_batch_size", "encoder_batch_size", "encoders", "commit_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.commit_seconds < 0:
            raise ValueError(f"commit_seconds must be >= 0, got {self.commit_seconds}")
        if self.token_dtype not in ("float32", "float16"):
            raise ValueError(f"token_dtype must be float32 or float16, got {self.token_dtype!r}")

    def checkpoint(self) -> Path | None:
        """The checkpoint directory this job embeds with (None: a fresh seeded model)."""
        from mvclam.engine.models.pretrained import resolve_checkpoint

        return resolve_checkpoint(self.model, self.model_config, self.model_overrides)


def load_embed_job(config: str | Path | None = None, **values: Any) -> EmbedJob:
    """An EmbedJob from a YAML job config (default: the shipped configs/embed.yaml) and `values`."""
    return load_job_config(EmbedJob, "embed", config, values)


@dataclass
class EmbedSummary:
    rows_in: int = 0
    embedded: int = 0
    failed: int = 0
    skipped: int = 0  # already done for this model version before the run
    duplicates: int = 0  # later occurrences of an id seen earlier in the input
    commits: int = 0
    wall_s: float = 0.0
    views_s: float = 0.0  # summed over workers (core-seconds)
    encode_s: float = 0.0  # summed over actors
    write_s: float = 0.0
    model_name: str = ""
    model_version: str = ""
    table_rows: int = 0
    error_rows: int = 0
    nodes: dict[str, list[str]] = field(default_factory=dict)
    errors_by_code: dict[str, int] = field(default_factory=dict)

    def rates(self) -> dict[str, float]:
        """Molecules per second: per views core, per encoder actor, of the writer, end to end."""
        processed = self.embedded + self.failed
        return {
            "views_per_core": processed / self.views_s if self.views_s else 0.0,
            "encoder_per_actor": self.embedded / self.encode_s if self.encode_s else 0.0,
            "writer": processed / self.write_s if self.write_s else 0.0,
            "end_to_end": processed / self.wall_s if self.wall_s else 0.0,
        }

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "rates": self.rates()}

    def format(self) -> str:
        r = self.rates()
        lines = [
            f"rows in {self.rows_in}: embedded {self.embedded}, failed {self.failed}, "
            f"already done {self.skipped}, duplicate ids {self.duplicates}",
            f"model {self.model_name} version {self.model_version}; table now {self.table_rows} rows, "
            f"errors table {self.error_rows} rows ({self.commits} commits)",
            f"wall {self.wall_s:.1f} s, {r['end_to_end']:.1f} mol/s end to end",
            f"views   {self.views_s:8.1f} core-s  {r['views_per_core']:8.1f} mol/s per core",
            f"encoder {self.encode_s:8.1f} s       {r['encoder_per_actor']:8.1f} mol/s per actor",
            f"writer  {self.write_s:8.1f} s       {r['writer']:8.1f} mol/s",
        ]
        if self.errors_by_code:
            lines.append("errors: " + ", ".join(f"{k} {v}" for k, v in sorted(self.errors_by_code.items())))
        return "\n".join(lines)


def _prepare_model(job: EmbedJob, workdir: Path) -> tuple[dict[str, bytes], str, str, int]:
    """(checkpoint blob, model name, version, embedding dim). A fresh model is seeded, saved once
    and shipped as a checkpoint, so every actor (on any node) holds identical weights and the
    version (a hash of the weights) is the same on every run with the same seed and config."""
    import torch

    from mvclam.engine.models.checkpoint import read_manifest
    from mvclam.engine.models.config import load_config
    from mvclam.engine.models.mvclam import MVCLAM

    directory = job.checkpoint()
    if directory is None:
        torch.manual_seed(job.seed)
        model = MVCLAM(load_config(job.model_config or "small", job.model_overrides))
        directory = model.save_pretrained(workdir / "fresh-model")
    manifest = read_manifest(directory)
    return (
        checkpoint_blob(directory),
        manifest["model_name"],
        manifest["model_version"],
        int(manifest["config"]["embedding_dim"]),
    )


def _view_config(job: EmbedJob) -> dict[str, Any]:
    from mvclam.engine.models.checkpoint import read_manifest
    from mvclam.engine.models.config import load_config

    directory = job.checkpoint()
    if directory is not None:
        return read_manifest(directory)["config"]["views"]
    return load_config(job.model_config or "small", job.model_overrides).views.to_dict()


@dataclass(frozen=True)
class _RemoteArgs:
    num_cpus: float

    def __call__(self) -> dict[str, float]:
        return {"num_cpus": self.num_cpus}


class _Writer:
    """Driver-side writer: de-duplicates ids, splits stage rows into the two tables, commits per chunk."""

    def __init__(
        self,
        store: CatalogStore,
        schema: pa.Schema,
        job: EmbedJob,
        summary: EmbedSummary,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.store, self.schema, self.job, self.summary = store, schema, job, summary
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.seen: set[str] = set()
        self.nodes: dict[str, set[str]] = defaultdict(set)
        self.started = time.perf_counter()
        self.clock = clock
        self.last_commit = clock()

    def add(self, batch: pa.Table) -> None:
        s = self.summary
        s.rows_in += batch.num_rows
        s.views_s += float(pc.sum(batch["_views_s"]).as_py() or 0.0)
        s.encode_s += float(pc.sum(batch["_encode_s"]).as_py() or 0.0)
        status = batch["status"]
        skipped = pc.equal(status, STATUS_SKIPPED)
        s.skipped += int(pc.sum(skipped).as_py() or 0)
        for stage in ("views", "encode"):
            self.nodes[stage].update(pc.unique(batch[f"_{stage}_node"]).to_pylist())
        batch = batch.filter(pc.invert(skipped))
        keep = []
        for i, id_value in enumerate(batch["id"].to_pylist()):
            if id_value in self.seen:
                s.duplicates += 1
            else:
                self.seen.add(id_value)
                keep.append(i)
        if len(keep) < batch.num_rows:
            batch = batch.take(pa.array(keep, pa.int64()))
        if batch.num_rows:
            self.pending.append(batch)
            self.pending_rows += batch.num_rows
        # Checked as batches arrive: rows wait at most commit_seconds plus one batch's time.
        overdue = self.clock() - self.last_commit >= self.job.commit_seconds
        if self.pending_rows >= self.job.commit_rows or (self.pending and overdue):
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        start = time.perf_counter()
        chunk = pa.concat_tables(self.pending)
        self.pending, self.pending_rows = [], 0
        now = datetime.now(UTC)
        embedded = embedded_rows(chunk.filter(pc.equal(chunk["status"], STATUS_OK)), self.schema, now)
        failed = error_rows(
            chunk.filter(pc.equal(chunk["status"], STATUS_FAILED)), self.summary.model_version, now
        )
        self.store.write(embedded, failed)
        self.last_commit = self.clock()
        s = self.summary
        s.embedded += embedded.num_rows
        s.failed += failed.num_rows
        for code, count in zip(
            *np.unique(failed["error_code"].to_numpy(zero_copy_only=False), return_counts=True), strict=True
        ):
            s.errors_by_code[str(code)] = s.errors_by_code.get(str(code), 0) + int(count)
        s.commits += 1
        s.write_s += time.perf_counter() - start
        if self.job.progress:
            elapsed = time.perf_counter() - self.started
            print(
                f"[mvclam embed] committed {s.embedded} embedded + {s.failed} failed "
                f"({s.rows_in} rows read, {elapsed:.0f} s)",
                file=sys.stderr,
                flush=True,
            )


def fit_cpus(job: EmbedJob, cpus: float) -> tuple[float, float]:
    """(encoder_cpus, views_cpus) for a Ray instance of `cpus` CPUs: the job's own, or scaled down
    to fractions when the encoder actors and one views task would not fit together. Ray holds the
    actors' CPUs for the whole run, so otherwise no views task is ever scheduled and the run hangs
    (`--num-cpus 1`, a 1-core machine)."""
    scale = cpu_fit_scale(job.encoders * job.encoder_cpus, job.views_cpus, cpus)
    return job.encoder_cpus * scale, job.views_cpus * scale


def _local_cpus(job: EmbedJob) -> tuple[float, float]:
    """`fit_cpus` for a local Ray instance; a cluster's own requests are kept (an autoscaler may
    add the CPUs they need)."""
    cpus = local_ray_cpus(job.address)
    if cpus is None:
        return job.encoder_cpus, job.views_cpus
    encoder_cpus, views_cpus = fit_cpus(job, cpus)
    if (encoder_cpus, views_cpus) != (job.encoder_cpus, job.views_cpus):
        print(
            f"[mvclam embed] {cpus:g} CPUs: fewer than {job.encoders} "
            f"encoder(s) x {job.encoder_cpus:g} + views {job.views_cpus:g} need; running with "
            f"encoder_cpus {encoder_cpus:.2g}, views_cpus {views_cpus:.2g}",
            file=sys.stderr,
            flush=True,
        )
    return encoder_cpus, views_cpus


def _run_pipeline(
    job: EmbedJob,
    paths: list[str],
    store: CatalogStore,
    schema: pa.Schema,
    summary: EmbedSummary,
    blob: dict[str, bytes],
    started: float,
) -> EmbedSummary:
    """Read -> views -> encoder -> writer into `store`, then compaction; fills `summary`."""
    import ray
    from ray.data import ActorPoolStrategy, DataContext, TaskPoolStrategy

    done = store.reconcile(summary.model_version).done
    encoder_cpus, views_cpus = _local_cpus(job)

    context = DataContext.get_current()
    context.execution_options.preserve_order = True  # first occurrence of an id wins, every run
    context.enable_progress_bars = job.progress
    gpus = actor_gpus(job.encoder_gpus)

    source = CatalogDatasource(
        paths,
        smiles_column=job.smiles_column,
        id_column=job.id_column,
        rows_per_block=job.views_batch_size,
    )
    dataset = ray.data.read_datasource(source, num_cpus=0)
    # A read task merges what it yields up to DataContext.target_max_block_size (128 MiB), so one
    # file arrives as one block and a single views task would take the whole catalog. Streaming
    # repartition cuts it into batch-sized blocks that fan out across the views tasks. Its tasks
    # ask for a whole CPU, which a scaled-down pipeline (fit_cpus) lacks while the encoder holds
    # its share, and with so few CPUs one views task at a time is all there is to fan out to.
    if (encoder_cpus, views_cpus) == (job.encoder_cpus, job.views_cpus):
        dataset = dataset.repartition(target_num_rows_per_block=job.views_batch_size)
    dataset = dataset.map_batches(
        compute_view_rows,
        batch_format="pyarrow",
        batch_size=job.views_batch_size,
        fn_kwargs={"done": ray.put(done), "view_config": _view_config(job)},
        num_cpus=views_cpus,
        # A remote-args function also keeps Ray from fusing the views into the encoder
        # actors (it fuses task -> actor stages with equal args): views must fan out to tasks.
        ray_remote_args_fn=_RemoteArgs(num_cpus=views_cpus),
        compute=TaskPoolStrategy(size=job.views_workers) if job.views_workers else None,
    )
    dataset = dataset.map_batches(
        EncoderActor,
        batch_format="pyarrow",
        batch_size=job.encoder_batch_size,
        fn_constructor_kwargs={
            "checkpoint": ray.put(blob),
            "token_dtype": job.token_dtype,
            "batch_size": job.encoder_batch_size,
            "num_threads": max(1, int(encoder_cpus)),
        },
        compute=ActorPoolStrategy(size=job.encoders),
        num_cpus=encoder_cpus,
        num_gpus=gpus,
    )
    writer = _Writer(store, schema, job, summary)
    for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
        writer.add(batch)
    writer.flush()
    # Also when this run committed nothing: a resume after a kill finds the killed run's many
    # small fragments still uncompacted.
    if job.optimize and not store.optimize():
        print(
            "mvclam embed: a concurrent writer kept preempting the compaction; every row is "
            "committed, and the next run or `mvclam index` compacts the table",
            file=sys.stderr,
        )
    summary.nodes = {stage: sorted(n for n in nodes if n) for stage, nodes in writer.nodes.items()}
    summary.table_rows, summary.error_rows = store.counts()
    summary.wall_s = time.perf_counter() - started
    return summary


def run_embed(job: EmbedJob) -> EmbedSummary:
    """Run the job and return its summary; re-running resumes (only ids not done are embedded)."""
    import ray

    started = time.perf_counter()
    paths = resolve_inputs(job.inputs)
    owns_ray = init_ray(job.address, job.num_cpus)
    try:
        with tempfile.TemporaryDirectory(prefix="mvclam-embed-") as workdir:
            blob, model_name, model_version, dim = _prepare_model(job, Path(workdir))
        summary = EmbedSummary(model_name=model_name, model_version=model_version)
        schema = embeddings_schema(dim, job.token_dtype)
        # Holds the table's writer lock until the run ends: a second job is refused meanwhile.
        store = CatalogStore.open(job.db, job.table, schema, job.errors_table)
        try:
            return _run_pipeline(job, paths, store, schema, summary, blob, started)
        except BaseException:
            # A failed run must not leave empty tables behind; its own error is the one to report.
            with contextlib.suppress(Exception):
                store.discard_if_unused()
            raise
        finally:
            store.close()
    finally:
        if owns_ray:
            ray.shutdown()
