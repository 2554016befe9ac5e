"""The 2D (graph) and 3D (conformer) views of one molecule, and the per-row batch API.

Atom order: views are computed on the standardised molecule rebuilt from its canonical SMILES.
Row i of every array is therefore the i-th atom written in `canonical_smiles`, and the views of a
molecule (conformer included) do not depend on how its input SMILES was written.
With `include_hydrogens`, hydrogens follow the heavy atoms (RDKit's AddHs order).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from rdkit import Chem, rdBase

from .config import ViewConfig
from .conformer import embed_conformer
from .errors import UnexpectedViewError, ViewError
from .features import atom_feature_matrix, bond_arrays, topological_distances
from .properties import MoleculeProperties, molecule_properties
from .standardize import MolInput, canonical_smiles, inchikey, standardize_tracked


@dataclass(eq=False)  # numpy fields: use `equals` for value comparison
class MoleculeViews:
    canonical_smiles: str
    inchikey: str
    atom_features: np.ndarray  # (N, F) uint8 category codes, see features.py
    bonds: np.ndarray  # (E, 2) int16, i < j, sorted
    bond_types: np.ndarray  # (E,) uint8 BOND_TYPES codes
    topological_distance: np.ndarray  # (N, N) uint8 shortest paths, 255 = capped/disconnected
    coordinates: np.ndarray  # (N, 3) float32 Angstrom, rows aligned with atom_features
    conformer_method: str  # METHOD_* constant, optionally with "+mmff"/"+uff"

    @property
    def num_atoms(self) -> int:
        return int(self.atom_features.shape[0])

    @property
    def element_indices(self) -> np.ndarray:
        """(N,) element codes (feature column 0): the atom types of the 3D encoder."""
        return self.atom_features[:, 0]

    def adjacency(self) -> np.ndarray:
        """(N, N) float32 symmetric 0/1 bond matrix without self-loops."""
        adjacency = np.zeros((self.num_atoms, self.num_atoms), dtype=np.float32)
        i, j = self.bonds[:, 0], self.bonds[:, 1]
        adjacency[i, j] = 1.0
        adjacency[j, i] = 1.0
        return adjacency

    def equals(self, other: MoleculeViews) -> bool:
        """Exact equality of every field, dtypes included."""
        if (self.canonical_smiles, self.inchikey, self.conformer_method) != (
            other.canonical_smiles,
            other.inchikey,
            other.conformer_method,
        ):
            return False
        return all(
            a.dtype == b.dtype and np.array_equal(a, b)
            for a, b in zip(self._arrays(), other._arrays(), strict=True)
        )

    def _arrays(self) -> tuple[np.ndarray, ...]:
        return (self.atom_features, self.bonds, self.bond_types, self.topological_distance, self.coordinates)


class View2D(NamedTuple):
    atom_features: np.ndarray
    bonds: np.ndarray
    bond_types: np.ndarray
    topological_distance: np.ndarray


class View3D(NamedTuple):
    coordinates: np.ndarray
    conformer_method: str


def compute_2d_view(mol: Chem.Mol) -> View2D:
    """Graph view of a sanitised molecule, rows in its atom order."""
    bonds, bond_types = bond_arrays(mol)
    return View2D(atom_feature_matrix(mol), bonds, bond_types, topological_distances(mol))


def compute_3d_view(mol: Chem.Mol, config: ViewConfig | None = None) -> View3D:
    """Conformer of `mol`; hydrogens are added for embedding and only `mol`'s atoms are returned."""
    config = config or ViewConfig()
    with rdBase.BlockLogs():
        mol_h = Chem.AddHs(mol)
        positions, method = embed_conformer(mol_h, config)
    return View3D(_own_rows(positions, mol.GetNumAtoms()), method)


def _own_rows(positions: np.ndarray, n_atoms: int) -> np.ndarray:
    """First `n_atoms` rows: AddHs appends hydrogens after the existing atoms, so these are the
    graph's atoms. Copied when shorter so the hydrogen rows are not kept alive in memory."""
    return positions if n_atoms == len(positions) else positions[:n_atoms].copy()


def _canonical_form(mol: Chem.Mol, source_smiles: str | None) -> tuple[Chem.Mol, str]:
    """(molecule in canonical atom and bond order, canonical SMILES).

    The molecule is rebuilt from its canonical SMILES (~0.2 ms) unless it already is the parse of
    that very string (catalogs usually store canonical SMILES). Renumbering atoms alone is not
    enough: ETKDG output also depends on bond order. Same canonical SMILES -> same conformer.
    """
    smiles = canonical_smiles(mol)
    if source_smiles == smiles:
        return mol, smiles
    rebuilt = Chem.MolFromSmiles(smiles)
    if rebuilt is None or rebuilt.GetNumAtoms() != mol.GetNumAtoms():
        # Rare SMILES round-trip failure: fall back to renumbering into SMILES output order.
        order = [int(i) for i in mol.GetProp("_smilesAtomOutputOrder").strip("[]").split(",") if i]
        rebuilt = Chem.RenumberAtoms(mol, order)
    return rebuilt, smiles


def _compute_views(mol_or_smiles: MolInput, config: ViewConfig) -> tuple[MoleculeViews, Chem.Mol, Chem.Mol]:
    """Views, the standardised molecule they were computed on (heavy atoms, canonical order) and
    that molecule with explicit hydrogens (carrying the conformer)."""
    with rdBase.BlockLogs():
        mol, smiles = _canonical_form(*standardize_tracked(mol_or_smiles, config))
        key = inchikey(mol)
        mol_h = Chem.AddHs(mol)  # the only AddHs: embedding target and, optionally, the graph
        graph = mol_h if config.include_hydrogens else mol
        view_2d = compute_2d_view(graph)
        positions, method = embed_conformer(mol_h, config)
    views = MoleculeViews(
        canonical_smiles=smiles,
        inchikey=key,
        atom_features=view_2d.atom_features,
        bonds=view_2d.bonds,
        bond_types=view_2d.bond_types,
        topological_distance=view_2d.topological_distance,
        coordinates=_own_rows(positions, graph.GetNumAtoms()),
        conformer_method=method,
    )
    return views, mol, mol_h


def compute_views(mol_or_smiles: MolInput, config: ViewConfig | None = None) -> MoleculeViews:
    """Standardise and compute both views; raises a ViewError subclass for a bad molecule."""
    return _compute_views(mol_or_smiles, config or ViewConfig())[0]


@dataclass
class ViewResult:
    index: int  # position in the input sequence
    views: MoleculeViews | None
    error: ViewError | None
    properties: MoleculeProperties | None = None  # only when asked for (with_properties=True)

    @property
    def ok(self) -> bool:
        return self.error is None


def compute_views_batch(
    inputs: Sequence[MolInput], config: ViewConfig | None = None, with_properties: bool = False
) -> list[ViewResult]:
    """One ViewResult per input, in order. Never raises for a bad row: unexpected exceptions are
    wrapped in an UnexpectedViewError so one odd record cannot kill a catalog job.

    `with_properties` also fills `ViewResult.properties`, computed on the molecule the views were
    built from (re-parsing the canonical SMILES for them cost ~0.7 ms per molecule, 3% of a row).
    """
    config = config or ViewConfig()
    results = []
    for index, item in enumerate(inputs):
        try:
            views, mol, mol_h = _compute_views(item, config)
            properties = molecule_properties(mol, mol_h) if with_properties else None
            results.append(ViewResult(index, views, None, properties))
        except ViewError as exc:
            results.append(ViewResult(index, None, exc))
        except Exception as exc:
            error = UnexpectedViewError(f"{type(exc).__name__}: {exc}")
            error.__cause__ = exc
            results.append(ViewResult(index, None, error))
    return results
