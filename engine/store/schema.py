"""Arrow schemas of the embedded-catalog tables and builders for their vector columns.

Embeddings table (one row per molecule id; see docs in README "Embedding job"):
    id, input_smiles, canonical_smiles, inchikey              identity
    tokens  list<fixed_size_list<T, D>>                       2K query-token vectors (LanceDB multi-vector)
    pooled  fixed_size_list<T, D>                             mean of the tokens, L2-normalised
    num_atoms … coordinates, conformer_method                 the stored views (VIEW_SCHEMA columns):
                                                              `views_from_arrow` re-encodes without RDKit
    mw, logp, hbd, hba, tpsa, rotatable_bonds, heavy_atoms    RDKit properties of the standardised molecule
    source, source_row                                        provenance (file name, 1-based row)
    model_name, model_version, embedded_at                    which model wrote the row, and when (UTC)
T is float32 or float16 (job config `token_dtype`).

Errors table: id, input, error_code, reason, source, source_row, model_version, failed_at.

Caption columns (added by `mvclam caption --db`): caption, caption_error, caption_model_version,
caption_settings, caption_inchikey, captioned_at.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from mvclam.engine.views import VIEW_SCHEMA, MoleculeProperties

TOKEN_DTYPES: dict[str, pa.DataType] = {"float32": pa.float32(), "float16": pa.float16()}
SCHEMA_VERSION = b"1"
_META_SCHEMA_VERSION = b"mvclam.catalog_schema_version"
TIMESTAMP = pa.timestamp("us", tz="UTC")

# Basic RDKit properties for filtering searches (computed on the standardised molecule).
PROPERTY_FIELDS: tuple[pa.Field, ...] = (
    pa.field("mw", pa.float32()),
    pa.field("logp", pa.float32()),
    pa.field("hbd", pa.int16()),
    pa.field("hba", pa.int16()),
    pa.field("tpsa", pa.float32()),
    pa.field("rotatable_bonds", pa.int16()),
    pa.field("heavy_atoms", pa.int16()),
)

PROPERTY_COLUMNS: tuple[str, ...] = tuple(f.name for f in PROPERTY_FIELDS)
if MoleculeProperties._fields != PROPERTY_COLUMNS:  # the views compute them in this order
    raise ImportError(f"PROPERTY_FIELDS {PROPERTY_COLUMNS} differ from MoleculeProperties")

CAPTION_REFERENCES_TYPE = pa.list_(pa.struct([("id", pa.string()), ("similarity", pa.float32())]))

# Caption columns, added to an embeddings table by the bulk captioning job (see `captions.py`).
CAPTION_FIELDS: tuple[pa.Field, ...] = (
    pa.field("caption", pa.string()),
    pa.field("caption_error", pa.string()),
    pa.field("caption_model_version", pa.string()),
    pa.field("caption_settings", pa.string()),  # JSON of the generation settings and backend
    pa.field("caption_inchikey", pa.string()),  # the molecule the caption describes
    pa.field("captioned_at", TIMESTAMP),
    # Provenance: the described molecules the caption's prompt cited (their id in the reference
    # set named in caption_settings, and their Tanimoto similarity), best first; empty without.
    pa.field("caption_references", CAPTION_REFERENCES_TYPE),
)

_IDENTITY_FIELDS = (
    pa.field("id", pa.string(), nullable=False),
    pa.field("input_smiles", pa.string()),
)
_PROVENANCE_FIELDS = (
    pa.field("source", pa.string()),
    pa.field("source_row", pa.int64()),
)


def embeddings_schema(dim: int, token_dtype: str = "float32") -> pa.Schema:
    if token_dtype not in TOKEN_DTYPES:
        raise ValueError(f"token_dtype must be one of {sorted(TOKEN_DTYPES)}, got {token_dtype!r}")
    value_type = TOKEN_DTYPES[token_dtype]
    view_fields = [f for f in VIEW_SCHEMA if f.name not in ("canonical_smiles", "inchikey")]
    fields = [
        *_IDENTITY_FIELDS,
        pa.field("canonical_smiles", pa.string(), nullable=False),
        pa.field("inchikey", pa.string(), nullable=False),
        pa.field("tokens", pa.list_(pa.list_(value_type, dim)), nullable=False),
        pa.field("pooled", pa.list_(value_type, dim), nullable=False),
        *view_fields,
        *PROPERTY_FIELDS,
        *_PROVENANCE_FIELDS,
        pa.field("model_name", pa.string(), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("embedded_at", TIMESTAMP, nullable=False),
    ]
    metadata = dict(VIEW_SCHEMA.metadata or {})
    metadata[_META_SCHEMA_VERSION] = SCHEMA_VERSION
    return pa.schema(fields, metadata=metadata)


ERRORS_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("input", pa.string()),
        pa.field("error_code", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        *_PROVENANCE_FIELDS,
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("failed_at", TIMESTAMP, nullable=False),
    ],
    metadata={_META_SCHEMA_VERSION: SCHEMA_VERSION},
)


def vector_array(vectors: np.ndarray, value_type: pa.DataType | None = None) -> pa.FixedSizeListArray:
    """(B, D) -> fixed_size_list<T, D>, zero-copy over the flattened buffer."""
    if vectors.ndim != 2:
        raise ValueError(f"expected (B, D) vectors, got shape {vectors.shape}")
    values = pa.array(np.ascontiguousarray(vectors).reshape(-1), type=value_type)
    return pa.FixedSizeListArray.from_arrays(values, vectors.shape[1])


def multivector_array(tokens: np.ndarray, value_type: pa.DataType | None = None) -> pa.ListArray:
    """(B, K, D) -> list<fixed_size_list<T, D>>: what LanceDB treats as a multi-vector column.

    Returning a (B, K, D) numpy array from Ray's map_batches would give a tensor extension type
    instead, which LanceDB does not index or search as multi-vector.
    """
    if tokens.ndim != 3:
        raise ValueError(f"expected (B, K, D) tokens, got shape {tokens.shape}")
    batch, k, dim = tokens.shape
    inner = vector_array(tokens.reshape(batch * k, dim), value_type)
    offsets = pa.array(np.arange(0, (batch + 1) * k, k, dtype=np.int32)[: batch + 1])
    return pa.ListArray.from_arrays(offsets, inner)
