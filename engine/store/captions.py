"""The caption columns of a catalog table: adding them, which rows need a caption, keyed writes.

A row is done for a captioning version when it carries that version in `caption_model_version` and
its caption was written for the molecule it holds now (`caption_inchikey` equals `inchikey`). Writes
are update-only merge-inserts keyed on `id`: a caption never creates a row (an id deleted meanwhile
stays gone), and re-writing a row replaces its caption columns.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pyarrow as pa

from .lance_store import sql_quote, writing
from .schema import CAPTION_FIELDS, CAPTION_REFERENCES_TYPE, TIMESTAMP

if TYPE_CHECKING:
    import lancedb


def ensure_caption_columns(table: lancedb.table.Table) -> None:
    """Adds the (nullable) caption columns to a table written by `mvclam embed`, once."""
    missing = [f for f in CAPTION_FIELDS if f.name not in table.schema.names]
    if missing:
        table.add_columns(pa.schema(missing))


def caption_todo_filter(version: str, retry_errors: bool = False) -> str:
    """Rows that need a caption from this version: none yet, another version, or another molecule
    (and, with `retry_errors`, rows whose generation failed)."""
    clauses = [
        "caption_model_version IS NULL",
        f"caption_model_version != {sql_quote(version)}",
        "caption_inchikey IS NULL",
        "caption_inchikey != inchikey",
    ]
    if retry_errors:
        clauses.append("caption_error IS NOT NULL")
    return " OR ".join(clauses)


def merge_captions(table: lancedb.table.Table, rows: pa.Table, version: str, settings_json: str) -> None:
    """One update-only commit of the caption columns for `rows` (`id`, `inchikey` of the molecule
    captioned, `caption`, `caption_error`, optionally `caption_references`), stamped with `version`,
    the settings and the time."""
    now = pa.scalar(time.time_ns() // 1000, TIMESTAMP)
    if "caption_references" in rows.column_names:
        references = rows["caption_references"].cast(CAPTION_REFERENCES_TYPE)
    else:
        references = pa.nulls(rows.num_rows, CAPTION_REFERENCES_TYPE)
    update = pa.table(
        {
            "id": rows["id"],
            "caption": rows["caption"],
            "caption_error": rows["caption_error"],
            "caption_model_version": pa.array([version] * rows.num_rows, pa.string()),
            "caption_settings": pa.array([settings_json] * rows.num_rows, pa.string()),
            "caption_inchikey": rows["inchikey"],
            "captioned_at": pa.array([now] * rows.num_rows, TIMESTAMP),
            "caption_references": references,
        }
    )
    with writing(table.uri):
        table.merge_insert("id").when_matched_update_all().execute(update)
