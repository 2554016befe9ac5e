"""Reference sets: already-described molecules that a caption prompt cites (retrieval-augmented captioning).

A reference set holds one entry per molecule (InChIKey) with its first description. The look-up is
Tanimoto similarity of Morgan fingerprints (engine/views/fingerprints.py, the nearest-neighbour
baseline's fingerprint), a brute-force RDKit bulk scan: about 2 ms per query over 12k references,
far below the captioning cost. Fingerprints are recomputed from the SMILES when a set is loaded, so
the stored file holds only text columns (compact, diff-able, versioned by its SHA-256).

Two rules keep the citations honest:

* a molecule never gets itself as a reference (same InChIKey), and
* `without(keys)` drops molecules from the set, so an evaluation's references hold no evaluated
  molecule.

Sources: the shipped set (the training split's pairs, `checkpoints/reference-sets/`), a pair
dataset (training), or a user's LanceDB table of described molecules (`from_lance`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from rdkit import DataStructs

from mvclam.engine.views.fingerprints import morgan_bitvects

REFERENCES_FILE = "references.parquet"
SHIPPED_SETS_DIR = "reference-sets"  # under the mvclam.checkpoints package
REFERENCE_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("inchikey", pa.string(), nullable=False),
        pa.field("smiles", pa.string(), nullable=False),
        pa.field("description", pa.string(), nullable=False),
    ]
)


class ReferenceSetError(ValueError):
    """A reference set that cannot be read or built (missing columns, no described rows)."""


@dataclass(frozen=True)
class Reference:
    """One cited molecule: its id in the reference set, its similarity to the query, its description."""

    id: str
    similarity: float
    description: str

    def provenance(self) -> dict[str, object]:
        return {"id": self.id, "similarity": round(self.similarity, 4)}


class ReferenceSet:
    def __init__(
        self,
        ids: Sequence[str],
        inchikeys: Sequence[str],
        smiles: Sequence[str],
        descriptions: Sequence[str],
        source: str = "",
    ):
        if not (len(ids) == len(inchikeys) == len(smiles) == len(descriptions)):
            raise ReferenceSetError("ids, inchikeys, smiles and descriptions must have the same length")
        self.ids = list(ids)
        self.inchikeys = list(inchikeys)
        self.smiles = list(smiles)
        self.descriptions = list(descriptions)
        self.source = source
        self._fingerprints = morgan_bitvects(self.smiles)
        self._row_of_key = {key: row for row, key in enumerate(self.inchikeys)}

    def __len__(self) -> int:
        return len(self.ids)

    # ----------------------------------------------------------------------------- building
    @classmethod
    def from_rows(
        cls,
        ids: Iterable[str],
        inchikeys: Iterable[str],
        smiles: Iterable[str],
        descriptions: Iterable[str | None],
        source: str = "",
    ) -> ReferenceSet:
        """One entry per InChIKey (its first described row); rows without a description are skipped."""
        seen: set[str] = set()
        kept: list[tuple[str, str, str, str]] = []
        for row_id, key, smi, text in zip(ids, inchikeys, smiles, descriptions, strict=True):
            text = (text or "").strip()
            if not text or not key or not smi or key in seen:
                continue
            seen.add(key)
            kept.append((str(row_id), key, smi, " ".join(text.split())))
        if not kept:
            raise ReferenceSetError(f"no described molecules in {source or 'the given rows'}")
        columns = list(zip(*kept, strict=True))
        return cls(*columns, source=source)

    @classmethod
    def from_pairs(cls, data, source: str = "") -> ReferenceSet:
        """From training pairs (a PairDataset: views + descriptions); ids are the pair files' cids
        where the data has them, else InChIKeys."""
        keys = [v.inchikey for v in data.views]
        cids = list(getattr(data, "cids", None) or [])
        ids = cids if len(cids) == len(keys) else keys
        smiles = [v.canonical_smiles for v in data.views]
        return cls.from_rows(ids, keys, smiles, data.descriptions, source)

    @classmethod
    def from_lance(cls, uri: str, table: str, description_column: str = "description") -> ReferenceSet:
        """A LanceDB table of described molecules (`id`, `inchikey`, `smiles` or `canonical_smiles`,
        and `description_column`), e.g. a company's annotated compounds; undescribed rows are skipped."""
        import lancedb

        opened = lancedb.connect(uri).open_table(table)
        names = opened.schema.names
        smiles_column = "canonical_smiles" if "canonical_smiles" in names else "smiles"
        needed = ["id", "inchikey", smiles_column, description_column]
        missing = [c for c in needed if c not in names]
        if missing:
            raise ReferenceSetError(f"reference table {uri}/{table} lacks columns {missing} (has {names})")
        rows = opened.to_arrow().select(needed)
        return cls.from_rows(
            rows["id"].to_pylist(),
            rows["inchikey"].to_pylist(),
            rows[smiles_column].to_pylist(),
            rows[description_column].to_pylist(),
            source=f"lancedb:{uri}/{table}",
        )

    @property
    def version(self) -> str:
        """Content hash (12 hex) of the ids, molecules and descriptions: which set a caption cited."""
        digest = hashlib.sha256()
        for column in (self.ids, self.inchikeys, self.descriptions):
            digest.update("\x1f".join(column).encode())
            digest.update(b"\x1e")
        return digest.hexdigest()[:12]

    def describe(self) -> dict[str, object]:
        return {"source": self.source, "version": self.version, "molecules": len(self)}

    # ----------------------------------------------------------------------------- storage
    @classmethod
    def from_arrow(cls, table: pa.Table, source: str = "") -> ReferenceSet:
        return cls(*(table[name].to_pylist() for name in REFERENCE_SCHEMA.names), source=source)

    def to_arrow(self) -> pa.Table:
        return pa.table([self.ids, self.inchikeys, self.smiles, self.descriptions], schema=REFERENCE_SCHEMA)

    def save(self, directory: str | Path) -> Path:
        """Writes `directory/references.parquet` (zstd) and returns its path."""
        path = Path(directory) / REFERENCES_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(self.to_arrow(), path, compression="zstd", compression_level=19)
        return path

    @classmethod
    def load(cls, path: str | Path) -> ReferenceSet:
        """From a directory holding references.parquet, or the file itself."""
        path = Path(path)
        if path.is_dir():
            path = path / REFERENCES_FILE
        if not path.is_file():
            raise ReferenceSetError(f"no reference set at {path}")
        table = pq.read_table(path)
        missing = [f.name for f in REFERENCE_SCHEMA if f.name not in table.schema.names]
        if missing:
            raise ReferenceSetError(f"{path} lacks columns {missing}")
        return cls.from_arrow(table, source=str(path))

    # ----------------------------------------------------------------------------- look-up
    def without(self, inchikeys: Iterable[str]) -> ReferenceSet:
        """A copy without these molecules (an evaluation removes every evaluated molecule)."""
        drop = set(inchikeys)
        keep = [row for row, key in enumerate(self.inchikeys) if key not in drop]
        subset = ReferenceSet.__new__(ReferenceSet)
        subset.ids = [self.ids[r] for r in keep]
        subset.inchikeys = [self.inchikeys[r] for r in keep]
        subset.smiles = [self.smiles[r] for r in keep]
        subset.descriptions = [self.descriptions[r] for r in keep]
        subset.source = f"{self.source} minus {len(self) - len(keep)} molecules"
        subset._fingerprints = [self._fingerprints[r] for r in keep]
        subset._row_of_key = {key: row for row, key in enumerate(subset.inchikeys)}
        return subset

    def nearest(self, smiles: Sequence[str], inchikeys: Sequence[str], k: int) -> list[list[Reference]]:
        """The k most similar references of each query molecule, best first, never the molecule
        itself (same InChIKey). Ties keep the reference set's order."""
        if len(smiles) != len(inchikeys):
            raise ValueError(f"{len(smiles)} SMILES but {len(inchikeys)} InChIKeys")
        if k <= 0 or not len(self):
            return [[] for _ in smiles]
        out = []
        for fingerprint, key in zip(morgan_bitvects(smiles), inchikeys, strict=True):
            similarity = np.asarray(DataStructs.BulkTanimotoSimilarity(fingerprint, self._fingerprints))
            own = self._row_of_key.get(key)
            if own is not None:
                similarity[own] = -1.0
            count = min(k, len(self) - (own is not None))
            top = np.argsort(-similarity, kind="stable")[:count]
            out.append([Reference(self.ids[r], float(similarity[r]), self.descriptions[r]) for r in top])
        return out


def resolve_reference_set(name: str | Path, captioner_directory: str | Path | None = None) -> Path:
    """A captioner's reference set: `name` shipped under `checkpoints/reference-sets/` (package
    `mvclam.checkpoints`) or a path; with no name, the references.parquet saved beside the captioner."""
    import importlib.util

    if not str(name):
        if captioner_directory is not None and (Path(captioner_directory) / REFERENCES_FILE).is_file():
            return Path(captioner_directory)
        raise ReferenceSetError("the captioner names no reference set: pass one (--references)")
    spec = importlib.util.find_spec("mvclam.checkpoints")
    if spec is not None and spec.submodule_search_locations:
        shipped = Path(next(iter(spec.submodule_search_locations))) / SHIPPED_SETS_DIR / str(name)
        if (shipped / REFERENCES_FILE).is_file():
            return shipped
    path = Path(name)
    if path.is_dir() or path.is_file():
        return path
    raise ReferenceSetError(f"no reference set {str(name)!r} (neither shipped nor a path)")


def open_reference_table(spec: str, description_column: str = "description") -> ReferenceSet:
    """The reference set of `--references DB/TABLE`."""
    db, table = parse_table_reference(spec)
    return ReferenceSet.from_lance(db, table, description_column)


def parse_table_reference(spec: str) -> tuple[str, str]:
    """`DB/TABLE` (a LanceDB directory or URI, then the table name) → (db, table)."""
    db, _, table = spec.rstrip("/").rpartition("/")
    if not db or not table:
        raise ReferenceSetError(
            f"--references wants DB/TABLE (a LanceDB directory and a table), got {spec!r}"
        )
    return db, table
