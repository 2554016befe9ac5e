"""RDKit filter properties stored next to the views of a catalog row (the search filters' columns)."""

from __future__ import annotations

from typing import NamedTuple

from rdkit import Chem
from rdkit.Chem import Crippen, Descriptors, rdMolDescriptors


class MoleculeProperties(NamedTuple):
    """Field order and names match `engine.store.PROPERTY_FIELDS`."""

    mw: float
    logp: float
    hbd: int
    hba: int
    tpsa: float
    rotatable_bonds: int
    heavy_atoms: int


def molecule_properties(mol: Chem.Mol, mol_with_hs: Chem.Mol | None = None) -> MoleculeProperties:
    """Properties of a sanitised molecule (Lipinski-style HBD/HBA, Crippen logP, TPSA without S/P).

    `mol_with_hs`, when given, must be `Chem.AddHs(mol)`: Crippen logP types the hydrogens too and
    would otherwise add them to a copy itself (~0.35 ms of its ~0.6 ms per molecule); the value is
    the same."""
    if mol_with_hs is None:
        logp = Crippen.MolLogP(mol)
    else:
        logp = rdMolDescriptors.CalcCrippenDescriptors(mol_with_hs, includeHs=False)[0]
    return MoleculeProperties(
        mw=Descriptors.MolWt(mol),
        logp=logp,
        hbd=rdMolDescriptors.CalcNumHBD(mol),
        hba=rdMolDescriptors.CalcNumHBA(mol),
        tpsa=rdMolDescriptors.CalcTPSA(mol),
        rotatable_bonds=rdMolDescriptors.CalcNumRotatableBonds(mol),
        heavy_atoms=mol.GetNumHeavyAtoms(),
    )
