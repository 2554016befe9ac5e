"""Catalog file readers: .smi/.txt, CSV/TSV, Parquet and SDF (plain or gzipped) into Arrow blocks."""

from .catalog import (
    FORMATS,
    ID_CANDIDATES,
    READ_SCHEMA,
    SMILES_CANDIDATES,
    catalog_format,
    read_catalog_file,
    resolve_inputs,
    split_smi_line,
)

__all__ = [
    "FORMATS",
    "ID_CANDIDATES",
    "READ_SCHEMA",
    "SMILES_CANDIDATES",
    "catalog_format",
    "read_catalog_file",
    "resolve_inputs",
    "split_smi_line",
]
