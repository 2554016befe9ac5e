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

# Lookup tables so the per-atom Python loop only reads raw RDKit values; mapping is vectorised.
_MAX_Z = 118
_ELEMENT_LUT = np.full(_MAX_Z + 1, ATOM_FEATURE_SPEC[0].other, dtype=np.uint8)
for _i, _sym in enumerate(ELEMENTS):
    _ELEMENT_LUT[SYMBOL_TO_ATOMIC_NUMBER[_sym]] = _i + 1

_HYB = ATOM_FEATURE_SPEC[7]
_HYBRIDIZATION_CODE = {getattr(Chem.HybridizationType, name): _HYB.code(name) for name in _HYB.categories}
_CHIRAL = ATOM_FEATURE_SPEC[8]
_CHIRAL_CODE = {
    Chem.ChiralType.CHI_UNSPECIFIED: _CHIRAL.code("none"),
    Chem.ChiralType.CHI_TETRAHEDRAL_CW: _CHIRAL.code("CW"),
    Chem.ChiralType.CHI_TETRAHEDRAL_CCW: _CHIRAL.code("CCW"),
}
_CIP = ATOM_FEATURE_SPEC[9]
_CIP_CODE = {"R": _CIP.code("R"), "S": _CIP.code("S")}
_BOND_CODE = {
    Chem.BondType.SINGLE: 1,
    Chem.BondType.DOUBLE: 2,
    Chem.BondType.TRIPLE: 3,
    Chem.BondType.AROMATIC: 4,
}


def _in_range(values: np.ndarray, low: int, high: int, other: int) -> np.ndarray:
    """Codes for integer categories low..high (value - low + 1), `other` outside the range."""
    return np.where((values >= low) & (values <= high), values - low + 1, other)


def _cip_code(atom: Chem.Atom) -> int:
    if not atom.HasProp("_CIPCode"):
        return _CIP.code("none")
    return _CIP_CODE.get(atom.GetProp("_CIPCode"), _CIP.other)


def atom_feature_matrix(mol: Chem.Mol) -> np.ndarray:
    """(N, NUM_ATOM_FEATURES) uint8 codes for a sanitised molecule, rows in atom-index order."""
    ring_info = mol.GetRingInfo()
    none_cip = _CIP.code("none")
    raw = np.array(
        [
            (
                atom.GetAtomicNum(),
                atom.GetDegree(),
                atom.GetTotalNumHs(True),  # includeNeighbors (positional: Boost kwargs are slow)
                atom.GetFormalCharge(),
                atom.GetIsAromatic(),
                ring_info.MinAtomRingSize(index),
                _HYBRIDIZATION_CODE.get(atom.GetHybridization(), _HYB.other),
                _CHIRAL_CODE.get(tag := atom.GetChiralTag(), _CHIRAL.other),
                _cip_code(atom) if tag else none_cip,  # only stereocentres carry a CIP label
            )
            for index, atom in enumerate(mol.GetAtoms())
        ],
        dtype=np.int32,
    ).reshape(-1, 9)
    z, degree, num_hs, charge, aromatic, ring_size, hybridization, chirality, cip = raw.T
    spec = ATOM_FEATURE_SPEC
    ring_code = np.where(ring_size == 0, 1, np.where(ring_size >= 8, 7, ring_size - 1))
    features = np.stack(
        [
            _ELEMENT_LUT[np.clip(z, 0, _MAX_Z)],  # dummy atoms (Z = 0) -> other
            _in_range(degree, 0, 6, spec[1].other),
            _in_range(num_hs, 0, 4, spec[2].other),
            _in_range(charge, -3, 3, spec[3].other),
            aromatic + 1,
            (ring_size > 0) + 1,
            ring_code,
            np.where(z == 1, _HYB.code("S"), hybridization),  # added H atoms have no hybridisation set
            chirality,
            cip,
        ],
        axis=1,
    )
    return features.astype(np.uint8)


def bond_arrays(mol: Chem.Mol) -> tuple[np.ndarray, np.ndarray]:
    """Bonds as ((E, 2) int16 with i < j, sorted lexicographically; (E,) uint8 BOND_TYPES codes).

    Sorting makes the arrays depend only on the atom order, not on RDKit's bond order (which follows
    the input SMILES).
    """
    raw = np.array(
        [
            (bond.GetBeginAtomIdx(), bond.GetEndAtomIdx(), _BOND_CODE.get(bond.GetBondType(), BOND_OTHER))
            for bond in mol.GetBonds()
        ],
        dtype=np.int32,
    ).reshape(-1, 3)
    pairs = np.sort(raw[:, :2], axis=1)
    order = np.lexsort((pairs[:, 1], pairs[:, 0]))
    return pairs[order].astype(np.int16), raw[order, 2].astype(np.uint8)


def topological_distances(mol: Chem.Mol) -> np.ndarray:
    """(N, N) uint8 shortest-path lengths in bonds; 255 caps long paths and marks disconnected pairs."""
    # RDKit returns 1e8 for disconnected pairs; clipping maps them (and paths >= 255) to 255.
    return np.minimum(Chem.GetDistanceMatrix(mol), 255).astype(np.uint8)
