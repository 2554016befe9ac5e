"""Arrow storage of MoleculeViews: one row per molecule, arrays flattened row-major into list columns.

Precomputed views (conformers above all) are stored once and read back bit-exactly, so catalog
jobs never re-embed a molecule. Columns are built with one concatenate + offsets per column rather
than per-row Python lists. The schema metadata records the atom feature spec, and reading data
written with a different spec fails loudly instead of feeding a model mismatched feature codes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from .features import ATOM_FEATURE_CARDINALITIES, ATOM_FEATURE_NAMES, NUM_ATOM_FEATURES
from .molecule_views import MoleculeViews

_META_NAMES = b"mvclam.atom_feature_names"
_META_CARDINALITIES = b"mvclam.atom_feature_cardinalities"

VIEW_SCHEMA = pa.schema(
    [
        pa.field("canonical_smiles", pa.string(), nullable=False),
        pa.field("inchikey", pa.string(), nullable=False),
        pa.field("num_atoms", pa.int16(), nullable=False),
        pa.field("atom_features", pa.list_(pa.uint8()), nullable=False),  # N * F, row-major
        pa.field("bonds", pa.list_(pa.int16()), nullable=False),  # E * 2
        pa.field("bond_types", pa.list_(pa.uint8()), nullable=False),  # E
        pa.field("topological_distance", pa.list_(pa.uint8()), nullable=False),  # N * N
        pa.field("coordinates", pa.list_(pa.float32()), nullable=False),  # N * 3
        pa.field("conformer_method", pa.string(), nullable=False),
    ],
    metadata={
        _META_NAMES: ",".join(ATOM_FEATURE_NAMES).encode(),
        _META_CARDINALITIES: ",".join(map(str, ATOM_FEATURE_CARDINALITIES)).encode(),
    },
)

# (column, MoleculeViews attribute dtype) of the list columns.
_LIST_COLUMNS: tuple[tuple[str, type[np.generic]], ...] = (
    ("atom_features", np.uint8),
    ("bonds", np.int16),
    ("bond_types", np.uint8),
    ("topological_distance", np.uint8),
    ("coordinates", np.float32),
)
_INT32_MAX = 2**31 - 1


def _list_array(arrays: list[np.ndarray], dtype: type[np.generic], name: str) -> pa.ListArray:
    offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
    np.cumsum([a.size for a in arrays], out=offsets[1:])
    if offsets[-1] > _INT32_MAX:
        raise ValueError(f"column {name!r} exceeds 2**31 values; convert fewer molecules per table")
    values = np.concatenate([a.ravel() for a in arrays]).astype(dtype, copy=False) if arrays else []
    return pa.ListArray.from_arrays(
        pa.array(offsets.astype(np.int32)), pa.array(values, type=pa.from_numpy_dtype(dtype))
    )


def views_to_arrow(views: Sequence[MoleculeViews]) -> pa.Table:
    """Table with VIEW_SCHEMA, one row per MoleculeViews, in order."""
    columns = {
        "canonical_smiles": pa.array([v.canonical_smiles for v in views], pa.string()),
        "inchikey": pa.array([v.inchikey for v in views], pa.string()),
        "num_atoms": pa.array(np.array([v.num_atoms for v in views], dtype=np.int16), pa.int16()),
    }
    for name, dtype in _LIST_COLUMNS:
        columns[name] = _list_array([getattr(v, name) for v in views], dtype, name)
    columns["conformer_method"] = pa.array([v.conformer_method for v in views], pa.string())
    return pa.Table.from_arrays([columns[f.name] for f in VIEW_SCHEMA], schema=VIEW_SCHEMA)


def _check_schema(schema: pa.Schema) -> None:
    for field in VIEW_SCHEMA:
        if schema.get_field_index(field.name) < 0:
            raise ValueError(f"not a views table: missing column {field.name!r}")
        if schema.field(field.name).type != field.type:
            raise ValueError(
                f"column {field.name!r} has type {schema.field(field.name).type}, expected {field.type}"
            )
    stored = (schema.metadata or {}).get(_META_NAMES)
    if stored is not None and stored != VIEW_SCHEMA.metadata[_META_NAMES]:
        raise ValueError(
            f"views were stored with atom features {stored.decode()!r}; this code expects {ATOM_FEATURE_NAMES}"
        )


def _flat(column: pa.ListArray, dtype: type[np.generic]) -> tuple[np.ndarray, np.ndarray]:
    """(values, offsets) with offsets rebased to 0; handles sliced arrays (offsets index `.values`)."""
    offsets = column.offsets.to_numpy().astype(np.int64)
    # One copy per column: per-row arrays become writable views into it instead of read-only
    # views into Arrow memory.
    values = column.values.to_numpy(zero_copy_only=False)[offsets[0] : offsets[-1]].astype(dtype, copy=True)
    return values, offsets - offsets[0]


def _views_from_batch(batch: pa.RecordBatch) -> list[MoleculeViews]:
    n_atoms = batch.column("num_atoms").to_numpy().astype(np.int64)
    n_bonds = np.diff(batch.column("bond_types").offsets.to_numpy())
    expected = {
        "atom_features": n_atoms * NUM_ATOM_FEATURES,
        "bonds": n_bonds * 2,
        "bond_types": n_bonds,
        "topological_distance": n_atoms * n_atoms,
        "coordinates": n_atoms * 3,
    }
    flat = {}
    for name, dtype in _LIST_COLUMNS:
        values, offsets = _flat(batch.column(name), dtype)
        if not np.array_equal(np.diff(offsets), expected[name]):
            raise ValueError(f"column {name!r} has list lengths inconsistent with num_atoms/bond_types")
        flat[name] = (values, offsets)
    smiles = batch.column("canonical_smiles").to_pylist()
    keys = batch.column("inchikey").to_pylist()
    methods = batch.column("conformer_method").to_pylist()
    views = []
    for row in range(batch.num_rows):
        n = int(n_atoms[row])
        part = {name: values[offsets[row] : offsets[row + 1]] for name, (values, offsets) in flat.items()}
        views.append(
            MoleculeViews(
                canonical_smiles=smiles[row],
                inchikey=keys[row],
                atom_features=part["atom_features"].reshape(n, NUM_ATOM_FEATURES),
                bonds=part["bonds"].reshape(-1, 2),
                bond_types=part["bond_types"],
                topological_distance=part["topological_distance"].reshape(n, n),
                coordinates=part["coordinates"].reshape(n, 3),
                conformer_method=methods[row],
            )
        )
    return views


def views_from_arrow(data: pa.Table | pa.RecordBatch) -> list[MoleculeViews]:
    """Inverse of views_to_arrow (exact round trip); accepts tables read back from Parquet."""
    _check_schema(data.schema)
    if isinstance(data, pa.RecordBatch):
        return _views_from_batch(data)
    return [view for batch in data.to_batches() for view in _views_from_batch(batch)]
