"""`PairDataset`: a prepared split held in memory, the trainer's and evaluator's input.

    data = PairDataset.load("runs/data/v2", "train")            # kind="pairs" (default) or "weak"
    data.views[i]          MoleculeViews of row i (decoded once at load)
    data.descriptions[i]   its description
    data.inchikeys[i]      its molecule's InChIKey
    data.group_ids[i]      int, equal for rows of the same molecule (InChIKey): never negatives of each other
    data.cids[i], data.sources[i]
    len(data)

Rows of the same molecule keep separate MoleculeViews objects with identical values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mvclam.engine.data.prepare import PAIRS_FILE, WEAK_FILE
from mvclam.engine.data.split import SPLITS
from mvclam.engine.views import MoleculeViews, views_from_arrow

Kind = Literal["pairs", "weak"]


def group_ids_of(keys: list[str]) -> np.ndarray:
    """(N,) int64 ids numbered by first appearance; equal ids = same InChIKey."""
    ids: dict[str, int] = {}
    return np.array([ids.setdefault(k, len(ids)) for k in keys], dtype=np.int64)


@dataclass
class PairDataset:
    views: list[MoleculeViews]
    descriptions: list[str]
    inchikeys: list[str]
    cids: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    split: str = "all"

    def __post_init__(self) -> None:
        if not (len(self.views) == len(self.descriptions) == len(self.inchikeys)):
            raise ValueError("views, descriptions and inchikeys must have the same length")
        self.group_ids = group_ids_of(self.inchikeys)

    def __len__(self) -> int:
        return len(self.views)

    @property
    def num_molecules(self) -> int:
        return len(set(self.inchikeys))

    @classmethod
    def from_table(cls, table: pa.Table, split: str = "all") -> PairDataset:
        return cls(
            views=views_from_arrow(table),
            descriptions=table.column("description").to_pylist(),
            inchikeys=table.column("inchikey").to_pylist(),
            cids=table.column("cid").to_pylist(),
            sources=table.column("source").to_pylist(),
            split=split,
        )

    @classmethod
    def load(
        cls, out_dir: str | Path, split: str = "train", kind: Kind = "pairs", sources: list[str] | None = None
    ) -> PairDataset:
        """Rows of `split` ("train", "validation", "test" or "all"), optionally of some sources only."""
        if split != "all" and split not in SPLITS:
            raise ValueError(f"split must be one of {(*SPLITS, 'all')}, got {split!r}")
        if kind not in ("pairs", "weak"):
            raise ValueError(f"kind must be 'pairs' or 'weak', got {kind!r}")
        path = Path(out_dir) / (PAIRS_FILE if kind == "pairs" else WEAK_FILE)
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: run `mvclam prepare --out {out_dir}` first")
        table = pq.read_table(path)
        if split != "all":
            table = table.filter(pc.equal(table.column("split"), split))
        if sources:
            table = table.filter(pc.is_in(table.column("source"), pa.array(sources)))
        return cls.from_table(table, split)
