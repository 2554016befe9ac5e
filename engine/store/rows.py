"""Rows of the catalog tables assembled from computed views, properties and embeddings.

The embedding job's stages carry, per molecule: `id`, `input`, `source`, `source_row`, the
VIEW_SCHEMA columns, the PROPERTY_FIELDS columns, `tokens`/`pooled` (built with `multivector_array`
and `vector_array`), `model_name` and `model_version`; a failed molecule carries `error_code` and
`error_reason` instead. These functions turn such rows into rows of the embeddings table and of the
errors table, stamped with the time of the commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import pyarrow as pa

from .schema import ERRORS_SCHEMA, PROPERTY_FIELDS, TIMESTAMP


def property_columns(properties: Sequence[Sequence[float | int]]) -> dict[str, pa.Array]:
    """PROPERTY_FIELDS columns from per-molecule property tuples (`MoleculeProperties`, same order)."""
    values = list(zip(*properties, strict=True)) if properties else [()] * len(PROPERTY_FIELDS)
    return {f.name: pa.array(v, f.type) for f, v in zip(PROPERTY_FIELDS, values, strict=True)}


def _stamp(now: datetime, rows: int) -> pa.Array:
    return pa.array([now] * rows, TIMESTAMP)


def embedded_rows(rows: pa.Table, schema: pa.Schema, now: datetime) -> pa.Table:
    """Embeddings-table rows (`schema`, from `embeddings_schema`) of embedded molecules' rows."""

    def column(f: pa.Field) -> pa.Array | pa.ChunkedArray:
        if f.name == "input_smiles":
            return rows["input"]
        if f.name == "embedded_at":
            return _stamp(now, rows.num_rows)
        return rows[f.name]

    return pa.Table.from_arrays([column(f) for f in schema], schema=schema)


def error_rows(rows: pa.Table, model_version: str, now: datetime) -> pa.Table:
    """Errors-table rows (ERRORS_SCHEMA) of failed molecules' rows (`error_code`, `error_reason`)."""
    return pa.table(
        {
            "id": rows["id"],
            "input": rows["input"],
            "error_code": rows["error_code"],
            "reason": rows["error_reason"],
            "source": rows["source"],
            "source_row": rows["source_row"],
            "model_version": pa.array([model_version] * rows.num_rows, pa.string()),
            "failed_at": _stamp(now, rows.num_rows),
        }
    ).cast(ERRORS_SCHEMA)
