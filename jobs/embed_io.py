"""The embedding job's Ray Data source over catalog files; the readers are `mvclam.engine.io`.

One read task streams one whole file in blocks of `rows_per_block` rows; the job's views stage runs
as a separate operator (its remote args differ), so the blocks of one large file fan out to every
views worker.
"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
from ray.data.datasource import FileBasedDatasource

from mvclam.engine.io import catalog_format, read_catalog_file


class CatalogDatasource(FileBasedDatasource):
    """Ray Data source for every catalog format; one read task streams one file in small blocks."""

    def __init__(
        self,
        paths: list[str],
        smiles_column: str | None = None,
        id_column: str | None = None,
        rows_per_block: int = 128,
        **kwargs,
    ):
        super().__init__(paths, **kwargs)
        self.smiles_column = smiles_column
        self.id_column = id_column
        self.rows_per_block = rows_per_block

    def _open_input_source(self, filesystem, path: str, **open_args) -> pa.NativeFile:
        if catalog_format(path) == "parquet":  # Parquet needs random access
            return filesystem.open_input_file(path)
        return super()._open_input_source(filesystem, path, **open_args)

    def _read_stream(self, f: pa.NativeFile, path: str) -> Iterator[pa.Table]:
        yield from read_catalog_file(f, path, self.smiles_column, self.id_column, self.rows_per_block)
