"""An evaluation set: the usable rows of one or more pair files with their views and molecules.

Views come from a prepared cache (`mvclam prepare`) when it holds the file's rows (same source
name, same ViewConfig), else they are computed here. `split` keeps only rows whose molecule
(InChIKey) is in that split of the fixed rule (split.py); "all" keeps every row.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mvclam.engine.data.dataset import PairDataset
from mvclam.engine.data.pairs import read_pair_files
from mvclam.engine.data.prepare import (
    ERRORS_FILE,
    MANIFEST_FILE,
    PAIRS_FILE,
    compute_unique_views,
    rows_with_views,
    usable_smiles,
)
from mvclam.engine.data.split import SPLITS, split_of
from mvclam.engine.views import MoleculeViews, ViewConfig


@dataclass
class EvalSet:
    data: PairDataset  # one row per usable pair (text)
    molecule_keys: list[str]  # distinct InChIKeys, in order of first appearance
    molecule_views: list[MoleculeViews]  # views of each distinct molecule (its first row's)
    truth: np.ndarray  # (T,) index into molecule_keys of each row
    split: str
    files: list[str]
    views_from: str
    errors: dict[str, int] = field(default_factory=dict)
    limited_to: int | None = None  # `head(n)`: only the first n molecules of the set

    @property
    def texts(self) -> list[str]:
        return self.data.descriptions

    def head(self, molecules: int) -> EvalSet:
        """The first `molecules` distinct molecules with all their rows (a quick look at a set)."""
        rows = [row for row, molecule in enumerate(self.truth.tolist()) if molecule < molecules]
        data = self.data
        subset = PairDataset(
            views=[data.views[r] for r in rows],
            descriptions=[data.descriptions[r] for r in rows],
            inchikeys=[data.inchikeys[r] for r in rows],
            cids=[data.cids[r] for r in rows] if data.cids else [],
            sources=[data.sources[r] for r in rows] if data.sources else [],
            split=data.split,
        )
        head = _from_dataset(subset, self.split, self.files, self.views_from, self.errors)
        head.limited_to = molecules
        return head

    def summary(self) -> dict[str, object]:
        return {
            "files": self.files,
            "split": self.split,
            "pairs": len(self.data),
            "molecules": len(self.molecule_keys),
            "rows_not_usable": self.errors,
            "views": self.views_from,
            **({"limited_to_first_molecules": self.limited_to} if self.limited_to else {}),
        }


def _from_dataset(
    data: PairDataset, split: str, files: list[str], views_from: str, errors: dict[str, int]
) -> EvalSet:
    keys: dict[str, int] = {}
    truth = np.array([keys.setdefault(k, len(keys)) for k in data.inchikeys], dtype=np.int64)
    first_row: dict[int, int] = {}
    for row, index in enumerate(truth.tolist()):
        first_row.setdefault(index, row)
    views = [data.views[first_row[i]] for i in range(len(keys))]
    return EvalSet(data, list(keys), views, truth, split, files, views_from, errors)


def _cached_table(
    prepared: Path, sources: list[str], config: ViewConfig
) -> tuple[pa.Table, dict[str, int]] | None:
    manifest_path = prepared / MANIFEST_FILE
    if not (prepared / PAIRS_FILE).exists() or not manifest_path.exists():
        return None
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("pairs", {}).get("view_config") != config.to_dict():
        return None
    table = pq.read_table(prepared / PAIRS_FILE)
    present = set(table.column("source").to_pylist())
    if not set(sources) <= present:
        return None
    table = table.filter(pc.is_in(table.column("source"), pa.array(sources)))
    errors = pq.read_table(prepared / ERRORS_FILE)
    errors = errors.filter(pc.is_in(errors.column("source"), pa.array(sources)))
    return table, _value_counts(errors.column("error")) if errors.num_rows else {}


def _value_counts(column: pa.ChunkedArray) -> dict[str, int]:
    return {item["values"]: item["counts"] for item in pc.value_counts(column).to_pylist()}


def load_eval_set(
    pair_files: Sequence[str | Path],
    split: str = "all",
    config: ViewConfig | None = None,
    prepared: str | Path | None = None,
    workers: int = 1,
    log: Callable[[str], None] = lambda message: None,
) -> EvalSet:
    if split != "all" and split not in SPLITS:
        raise ValueError(f"split must be one of {(*SPLITS, 'all')}, got {split!r}")
    config = config or ViewConfig()
    files = [str(p) for p in pair_files]
    sources = [Path(p).stem for p in pair_files]
    cached = _cached_table(Path(prepared), sources, config) if prepared else None
    if cached is not None:
        table, errors = cached
        # Re-check that the cache holds the same rows as the file (a changed file must not be
        # scored with stale descriptions).
        if read_pair_files(list(pair_files)).num_rows == table.num_rows + sum(errors.values()):
            views_from = f"cache {prepared}"
        else:
            cached = None
    if cached is None:
        rows = read_pair_files(list(pair_files))
        molecules = compute_unique_views(usable_smiles(rows), config, workers, log)
        table, error_rows = rows_with_views(rows, molecules.views, split_of)
        errors = _value_counts(error_rows.column("error")) if error_rows.num_rows else {}
        views_from = "computed"
        if table is None:
            raise ValueError(f"no usable pairs in {files}")
    if split != "all":
        table = table.filter(pc.equal(table.column("split"), split))
    if table.num_rows == 0:
        raise ValueError(f"no usable pairs of split {split!r} in {files}")
    return _from_dataset(PairDataset.from_table(table, split), split, files, views_from, errors)
