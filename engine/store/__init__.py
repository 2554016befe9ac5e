"""LanceDB storage of embedded catalogs: the documented Arrow schemas and a keyed, resumable writer.

store = CatalogStore.open("catalog_db", "molecules", embeddings_schema(dim=256))
done = store.done_ids(model_version)          # ids to skip on a re-run
store.write(embedded_rows, error_rows)        # merge-insert on id: never duplicates a row
"""

from .lance_store import CatalogStore, DoneIds, sql_in_list
from .schema import (
    ERRORS_SCHEMA,
    PROPERTY_FIELDS,
    TOKEN_DTYPES,
    embeddings_schema,
    multivector_array,
    vector_array,
)

__all__ = [
    "ERRORS_SCHEMA",
    "PROPERTY_FIELDS",
    "TOKEN_DTYPES",
    "CatalogStore",
    "DoneIds",
    "embeddings_schema",
    "multivector_array",
    "sql_in_list",
    "vector_array",
]
