"""Atom and bond feature spec of the 2D view.

Atom features are small integer category codes, one column per property, stored as uint8 (not
one-hot): 10 bytes per atom instead of ~100 floats, and a model builds one `nn.Embedding` per column
from `ATOM_FEATURE_CARDINALITIES` and sums them.

Encoding of every column: 0 = padding (never produced for a real atom, so `padding_idx=0` works),
1..K = the K categories listed in `ATOM_FEATURE_SPEC`, K+1 = "other/unknown". Cardinality = K + 2.

Columns (in order; column 0 is the element, used as the atom type by the 3D encoder):
  element      ELEMENTS (drug-like elements first, then common metals/others)
  degree       0..6 explicit neighbours (heavy-atom neighbours unless hydrogens are included)
  num_hs       0..4 total attached hydrogens (implicit + explicit)
  formal_charge -3..+3
  aromatic     no, yes
  in_ring      no, yes
  ring_size    smallest SSSR ring containing the atom: none, 3, 4, 5, 6, 7, 8+
  hybridization S, SP, SP2, SP3, SP3D, SP3D2 (hydrogen atoms are always S)
  chirality    RDKit chiral tag: none, CW, CCW (parity w.r.t. atom order, so it depends on the
               canonical atom order used by `compute_views`)
  cip          legacy RDKit CIP label: none, R, S (set during parsing, so it costs nothing extra)

Bonds are stored separately as (i, j) pairs with a `BOND_TYPES` code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rdkit import Chem

# Drug-like elements first (what ViewConfig allows by default), then metals, metalloids and noble
# gases seen in PubChem/ChEBI, so a broader `allowed_elements` still gets distinct atom types.
ELEMENTS: tuple[str, ...] = (
    "H", "C", "N", "O", "F", "P", "S", "Cl", "Br", "I", "B", "Si", "Se", "As", "Te",
    "Li", "Na", "K", "Rb", "Cs", "Be", "Mg", "Ca", "Sr", "Ba", "Al", "Ga", "In", "Tl",
    "Ge", "Sn", "Pb", "Sb", "Bi", "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn",
    "Zr", "Mo", "Ru", "Rh", "Pd", "Ag", "Cd", "W", "Re", "Os", "Ir", "Pt", "Au", "Hg",
    "Gd", "He", "Ne", "Ar", "Kr", "Xe",
)  # fmt: skip


@dataclass(frozen=True)
class FeatureColumn:
    name: str
    categories: tuple[str, ...]

    @property
    def other(self) -> int:
        """Code of the "other/unknown" bucket."""
        return len(self.categories) + 1

    @property
    def cardinality(self) -> int:
        return len(self.categories) + 2

    def code(self, category: str) -> int:
        return self.categories.index(category) + 1


ATOM_FEATURE_SPEC: tuple[FeatureColumn, ...] = (
    FeatureColumn("element", ELEMENTS),
    FeatureColumn("degree", tuple(str(d) for d in range(7))),
    FeatureColumn("num_hs", tuple(str(h) for h in range(5))),
    FeatureColumn("formal_charge", tuple(f"{c:+d}" if c else "0" for c in range(-3, 4))),
    FeatureColumn("aromatic", ("no", "yes")),
    FeatureColumn("in_ring", ("no", "yes")),
    FeatureColumn("ring_size", ("none", "3", "4", "5", "6", "7", "8+")),
    FeatureColumn("hybridization", ("S", "SP", "SP2", "SP3", "SP3D", "SP3D2")),
    FeatureColumn("chirality", ("none", "CW", "CCW")),
    FeatureColumn("cip", ("none", "R", "S")),
)
ATOM_FEATURE_NAMES: tuple[str, ...] = tuple(c.name for c in ATOM_FEATURE_SPEC)
ATOM_FEATURE_CARDINALITIES: tuple[int, ...] = tuple(c.cardinality for c in ATOM_FEATURE_SPEC)
NUM_ATOM_FEATURES = len(ATOM_FEATURE_SPEC)
NUM_ELEMENT_TYPES = ATOM_FEATURE_CARDINALITIES[0]
assert max(ATOM_FEATURE_CARDINALITIES) <= 256, "atom features are stored as uint8"

# Bond codes: index in this tuple. 0 is "no bond" so a dense bond-type matrix can be zero-padded.
BOND_TYPES: tuple[str, ...] = ("none", "single", "double", "triple", "aromatic", "other")
BOND_OTHER = len(BOND_TYPES) - 1

_PT = Chem.GetPeriodicTable()
SYMBOL_TO_ATOMIC_NUMBER: dict[str, int] = {_PT.GetElementSymbol(z): z for z in range(1, 119)}


# Vectorised mapping: per atom, Python only reads raw RDKit values (one `map` per property, the
# cheapest way through Boost.Python); all columns are then mapped to codes at once through one
# flat lookup table: code = LUT[base + clip(raw - offset, 0, len - 1)], clipping into the
# "other" entries at both ends of each column's table.
def _range_lut(column: FeatureColumn) -> list[int]:
    """Integer categories low..high: [other, 1..K, other], used with offset low - 1."""
    return [column.other, *range(1, len(column.categories) + 1), column.other]


def _enum_lut(column: FeatureColumn, enum_type: type, names: dict[str, str]) -> list[int]:
    """RDKit enum (by int value) -> code; values not listed in `names` -> other."""
    lut = [column.other] * (max(int(v) for v in enum_type.values.values()) + 1)
    for enum_name, category in names.items():
        lut[int(getattr(enum_type, enum_name))] = column.code(category)
    return lut


_SPEC = {c.name: c for c in ATOM_FEATURE_SPEC}
_element_lut = [_SPEC["element"].other] * 119  # by atomic number; dummy atoms (Z = 0) -> other
for _i, _sym in enumerate(ELEMENTS):
    _element_lut[SYMBOL_TO_ATOMIC_NUMBER[_sym]] = _i + 1
_ring = _SPEC["ring_size"]
_hybridization = _SPEC["hybridization"]
# (offset, lookup table) per column 0..8 (cip, column 9, is read separately: few atoms have one).
_COLUMN_LUTS: tuple[tuple[int, list[int]], ...] = (
    (0, _element_lut),
    (-1, _range_lut(_SPEC["degree"])),
    (-1, _range_lut(_SPEC["num_hs"])),
    (-4, _range_lut(_SPEC["formal_charge"])),
    (0, [1, 2]),  # aromatic: False/True
    (0, [1, 2]),  # in_ring, from the smallest ring size: 0 -> no, >= 1 -> yes
    (0, [1, _ring.other, _ring.other, *range(2, 8)]),  # ring size 0, 1, 2, 3..7, 8+ (clipped)
    (0, _enum_lut(_hybridization, Chem.HybridizationType, {n: n for n in _hybridization.categories})),
    (
        0,
        _enum_lut(
            _SPEC["chirality"],
            Chem.ChiralType,
            {"CHI_UNSPECIFIED": "none", "CHI_TETRAHEDRAL_CW": "CW", "CHI_TETRAHEDRAL_CCW": "CCW"},
        ),
    ),
)
_LUT_OFFSET = np.array([offset for offset, _ in _COLUMN_LUTS], dtype=np.int32)
_LUT_MAX = np.array([len(lut) - 1 for _, lut in _COLUMN_LUTS], dtype=np.int32)
_LUT_BASE = np.cumsum([0] + [len(lut) for _, lut in _COLUMN_LUTS[:-1]], dtype=np.int32)
_FLAT_LUT = np.concatenate([np.asarray(lut, dtype=np.uint8) for _, lut in _COLUMN_LUTS])
_HYBRIDIZATION_S = _hybridization.code("S")
_CIP = _SPEC["cip"]
_CIP_CODE = {"R": _CIP.code("R"), "S": _CIP.code("S")}
_BOND_CODE = {
    Chem.BondType.SINGLE: 1,
    Chem.BondType.DOUBLE: 2,
    Chem.BondType.TRIPLE: 3,
    Chem.BondType.AROMATIC: 4,
}


def atom_feature_matrix(mol: Chem.Mol) -> np.ndarray:
    """(N, NUM_ATOM_FEATURES) uint8 codes for a sanitised molecule, rows in atom-index order."""
    n_atoms = mol.GetNumAtoms()
    # GetAtomWithIdx: iterating mol.GetAtoms() goes through a pure-Python sequence wrapper (~3x slower).
    atoms = list(map(mol.GetAtomWithIdx, range(n_atoms)))
    atom = Chem.Atom
    ring_sizes = list(map(mol.GetRingInfo().MinAtomRingSize, range(n_atoms)))
    chiral_tags = list(map(atom.GetChiralTag, atoms))
    raw = np.array(
        [
            list(map(atom.GetAtomicNum, atoms)),
            list(map(atom.GetDegree, atoms)),
            list(map(atom.GetTotalNumHs, atoms, [True] * n_atoms)),  # includeNeighbors=True
            list(map(atom.GetFormalCharge, atoms)),
            list(map(atom.GetIsAromatic, atoms)),
            ring_sizes,
            ring_sizes,
            list(map(atom.GetHybridization, atoms)),
            chiral_tags,
        ],
        dtype=np.int32,
    ).T.reshape(n_atoms, 9)
    features = np.empty((n_atoms, NUM_ATOM_FEATURES), dtype=np.uint8)
    features[:, :9] = _FLAT_LUT[np.clip(raw - _LUT_OFFSET, 0, _LUT_MAX) + _LUT_BASE]
    features[raw[:, 0] == 1, 7] = _HYBRIDIZATION_S  # hydrogens added by AddHs have no hybridisation set
    features[:, 9] = _CIP.code("none")
    for index, tag in enumerate(chiral_tags):
        if tag and atoms[index].HasProp("_CIPCode"):  # only stereocentres carry a CIP label
            features[index, 9] = _CIP_CODE.get(atoms[index].GetProp("_CIPCode"), _CIP.other)
    return features


def bond_arrays(mol: Chem.Mol) -> tuple[np.ndarray, np.ndarray]:
    """Bonds as ((E, 2) int16 with i < j, sorted lexicographically; (E,) uint8 BOND_TYPES codes).

    Sorting makes the arrays depend only on the atom order, not on RDKit's bond order.
    """
    bonds = list(map(mol.GetBondWithIdx, range(mol.GetNumBonds())))
    bond = Chem.Bond
    ends = np.array(
        [list(map(bond.GetBeginAtomIdx, bonds)), list(map(bond.GetEndAtomIdx, bonds))], dtype=np.int32
    ).reshape(2, -1)
    codes = np.array([_BOND_CODE.get(t, BOND_OTHER) for t in map(bond.GetBondType, bonds)], dtype=np.uint8)
    i, j = ends.min(axis=0), ends.max(axis=0)
    order = np.argsort(i * mol.GetNumAtoms() + j, kind="stable")
    return np.stack([i[order], j[order]], axis=1).astype(np.int16), codes[order]


def topological_distances(mol: Chem.Mol) -> np.ndarray:
    """(N, N) uint8 shortest-path lengths in bonds; 255 caps long paths and marks disconnected pairs."""
    # RDKit returns 1e8 for disconnected pairs; clipping maps them (and paths >= 255) to 255.
    return np.minimum(Chem.GetDistanceMatrix(mol), 255).astype(np.uint8)
