"""The two compute stages of the embedding job, as Ray Data batch functions over Arrow tables.

Stage rows keep input order and carry a `status`: "ok" (views computed, then embedded), "failed"
(error_code/error_reason set) or "skipped" (id already done for this model version: only the id and
provenance travel on, so the summary can count it). `_views_s`/`_encode_s` are the seconds a stage
spent per row (batch time / rows) and `_views_node`/`_encode_node` the Ray node that ran it; the
writer sums them into per-stage throughput and drops them.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
from rdkit import rdBase

from mvclam.engine.store import TOKEN_DTYPES, done_mask, multivector_array, property_columns, vector_array
from mvclam.engine.views import VIEW_SCHEMA, ViewConfig, compute_views_batch, views_to_arrow
from mvclam.jobs.common import retry_per_row, unpack_checkpoint

STATUS_OK, STATUS_FAILED, STATUS_SKIPPED = "ok", "failed", "skipped"
READ_ERROR = "read_error"
ENCODER_ERROR = "encoder_failed"
VIEW_FIELDS: tuple[pa.Field, ...] = tuple(VIEW_SCHEMA)


def _node_id() -> str:
    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"


_DONE_CACHE: dict[Any, pa.Array] = {}


def _done_ids(done: pa.Array | ray.ObjectRef | None) -> pa.Array | None:
    # Fetched once per worker process: the array is immutable for the whole run.
    if isinstance(done, ray.ObjectRef):
        if done not in _DONE_CACHE:
            _DONE_CACHE.clear()
            _DONE_CACHE[done] = ray.get(done)
        return _DONE_CACHE[done]
    return done


def compute_view_rows(
    batch: pa.Table, done: pa.Array | ray.ObjectRef | None, view_config: dict[str, Any]
) -> pa.Table:
    """READ_SCHEMA rows -> stage rows with views and properties (one output row per input row)."""
    start = time.perf_counter()
    n = batch.num_rows
    skipped = done_mask(batch["id"], _done_ids(done))
    read_errors = batch["read_error"].to_pylist()
    inputs = batch["input"].to_pylist()
    todo = [i for i in range(n) if not skipped[i] and read_errors[i] is None]
    with rdBase.BlockLogs():
        results = compute_views_batch(
            [inputs[i] for i in todo], ViewConfig.from_dict(view_config), with_properties=True
        )

    status = np.where(skipped, STATUS_SKIPPED, STATUS_FAILED).astype(object)
    codes: list[str | None] = [
        READ_ERROR if e is not None and not s else None for e, s in zip(read_errors, skipped, strict=True)
    ]
    reasons: list[str | None] = [e if c else None for e, c in zip(read_errors, codes, strict=True)]
    good_rows, good_views, properties = [], [], []
    for row, result in zip(todo, results, strict=True):
        if result.ok:
            status[row] = STATUS_OK
            good_rows.append(row)
            good_views.append(result.views)
            properties.append(result.properties)
        else:
            codes[row], reasons[row] = result.error.code.value, result.error.reason

    # Scatter the ok rows' columns back into input order: take() with null indices gives null rows.
    position = np.full(n, -1, dtype=np.int64)
    position[good_rows] = np.arange(len(good_rows))
    take = pa.array(position, mask=position < 0)
    views = views_to_arrow(good_views)
    columns: dict[str, pa.Array] = {name: batch[name] for name in ("id", "input", "source", "source_row")}
    columns["status"] = pa.array(status.tolist(), pa.string())
    columns["error_code"] = pa.array(codes, pa.string())
    columns["error_reason"] = pa.array(reasons, pa.string())
    for field in VIEW_FIELDS:
        columns[field.name] = views[field.name].take(take)
    for name, values in property_columns(properties).items():
        columns[name] = values.take(take)
    seconds = time.perf_counter() - start
    columns["_views_s"] = pa.array(np.full(n, seconds / max(n, 1)))
    columns["_views_node"] = pa.array([_node_id()] * n, pa.string())
    return pa.table(columns)


class EncoderActor:
    """Callable class for `map_batches(compute=ActorPoolStrategy(...))`: loads the model once per actor."""

    def __init__(
        self,
        checkpoint: dict[str, bytes] | ray.ObjectRef,
        token_dtype: str = "float32",
        batch_size: int = 64,
        num_threads: int = 1,
    ):
        import torch

        from mvclam.engine.embedder import MoleculeEmbedder, default_device
        from mvclam.engine.models.mvclam import MVCLAM

        torch.set_num_threads(max(1, num_threads))  # one actor = its Ray CPUs, not every core
        with tempfile.TemporaryDirectory(prefix="mvclam-ckpt-") as tmp:
            model = MVCLAM.from_pretrained(unpack_checkpoint(checkpoint, tmp)).to(default_device()).eval()
        self.model = model
        self.value_type = TOKEN_DTYPES[token_dtype]
        self.numpy_dtype = np.float16 if token_dtype == "float16" else np.float32
        torch_dtype = torch.float16 if token_dtype == "float16" else torch.float32
        # Batch-invariant: a resumed run, whose batches hold other molecules, stores the same tokens.
        self.embedder = MoleculeEmbedder(
            model, batch_size=batch_size, token_dtype=torch_dtype, batch_invariant=True
        )
        self.node = _node_id()
        self.pid = os.getpid()

    def _embed(self, views: list) -> tuple[np.ndarray, np.ndarray]:
        out = self.embedder.embed_views(views)
        return out.tokens.numpy(), out.pooled.numpy()

    def __call__(self, batch: pa.Table) -> pa.Table:
        from mvclam.engine.views import views_from_arrow

        start = time.perf_counter()
        n = batch.num_rows
        config = self.model.config
        ok_rows = np.flatnonzero(pc.equal(batch["status"], STATUS_OK).to_numpy(zero_copy_only=False))
        status = batch["status"].to_pylist()
        codes, reasons = batch["error_code"].to_pylist(), batch["error_reason"].to_pylist()
        tokens = np.zeros((len(ok_rows), config.num_molecule_tokens, config.embedding_dim), np.float32)
        pooled = np.zeros((len(ok_rows), config.embedding_dim), np.float32)
        embedded = np.ones(len(ok_rows), dtype=bool)
        if len(ok_rows):
            views = views_from_arrow(batch.take(pa.array(ok_rows)).select([f.name for f in VIEW_FIELDS]))
            # A molecule that breaks the batch is isolated; the others are still embedded.
            results, errors = retry_per_row(lambda vs: list(zip(*self._embed(vs), strict=True)), views)
            for j, (result, error) in enumerate(zip(results, errors, strict=True)):
                if error is None:
                    tokens[j], pooled[j] = result
                else:
                    embedded[j] = False
                    row = int(ok_rows[j])
                    status[row], codes[row], reasons[row] = STATUS_FAILED, ENCODER_ERROR, error
        position = np.full(n, -1, dtype=np.int64)
        position[ok_rows[embedded]] = np.arange(int(embedded.sum()))
        take = pa.array(position, mask=position < 0)
        out = batch.drop_columns(["status", "error_code", "error_reason"])
        out = out.append_column("status", pa.array(status, pa.string()))
        out = out.append_column("error_code", pa.array(codes, pa.string()))
        out = out.append_column("error_reason", pa.array(reasons, pa.string()))
        out = out.append_column(
            "tokens", multivector_array(tokens[embedded].astype(self.numpy_dtype), self.value_type).take(take)
        )
        out = out.append_column(
            "pooled", vector_array(pooled[embedded].astype(self.numpy_dtype), self.value_type).take(take)
        )
        out = out.append_column("model_name", pa.array([config.name] * n, pa.string()))
        out = out.append_column("model_version", pa.array([self.model.model_version] * n, pa.string()))
        seconds = time.perf_counter() - start
        out = out.append_column("_encode_s", pa.array(np.full(n, seconds / max(n, 1))))
        return out.append_column("_encode_node", pa.array([self.node] * n, pa.string()))
