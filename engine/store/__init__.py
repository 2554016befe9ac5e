"""LanceDB storage of embedded catalogs: the catalog table's schema, rows, filters and keyed writes.

store = CatalogStore.open("catalog_db", "molecules", embeddings_schema(dim=256))
done = store.done_ids(model_version)          # ids to skip on a re-run (`done_mask` per batch)
store.write(embedded_rows(...), error_rows(...))   # merge-insert on id: never duplicates a row
table = open_catalog_table("catalog_db", "molecules")   # for search, captioning, indexing
store.close()                                  # releases the table's writer lock (local databases)
"""

from .captions import caption_todo_filter, ensure_caption_columns, merge_captions
from .errors import CatalogStorageError, CatalogTableDamaged, CatalogTableLocked, storage_detail
from .lance_store import (
    CatalogStore,
    CatalogTableNotFound,
    DoneIds,
    done_mask,
    open_catalog_table,
    optimize_table,
    reading,
    sql_in_list,
    sql_quote,
    table_uri,
)
from .lock import WriterLock
from .rows import embedded_rows, error_rows, property_columns
from .schema import (
    CAPTION_FIELDS,
    CAPTION_REFERENCES_TYPE,
    ERRORS_SCHEMA,
    PROPERTY_COLUMNS,
    PROPERTY_FIELDS,
    TIMESTAMP,
    TOKEN_DTYPES,
    embeddings_schema,
    multivector_array,
    vector_array,
)

__all__ = [
    "CAPTION_FIELDS",
    "CAPTION_REFERENCES_TYPE",
    "ERRORS_SCHEMA",
    "PROPERTY_COLUMNS",
    "PROPERTY_FIELDS",
    "TIMESTAMP",
    "TOKEN_DTYPES",
    "CatalogStorageError",
    "CatalogStore",
    "CatalogTableDamaged",
    "CatalogTableLocked",
    "CatalogTableNotFound",
    "DoneIds",
    "WriterLock",
    "caption_todo_filter",
    "done_mask",
    "embedded_rows",
    "embeddings_schema",
    "ensure_caption_columns",
    "error_rows",
    "merge_captions",
    "multivector_array",
    "open_catalog_table",
    "optimize_table",
    "property_columns",
    "reading",
    "sql_in_list",
    "sql_quote",
    "storage_detail",
    "table_uri",
    "vector_array",
]
