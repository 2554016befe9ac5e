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


def molecule_properties(mol: Chem.Mol) -> MoleculeProperties:
    """Properties of a sanitised molecule (Lipinski-style HBD/HBA, Crippen logP, TPSA without S/P)."""
    return MoleculeProperties(
        mw=Descriptors.MolWt(mol),
        logp=Crippen.MolLogP(mol),
        hbd=rdMolDescriptors.CalcNumHBD(mol),
        hba=rdMolDescriptors.CalcNumHBA(mol),
        tpsa=rdMolDescriptors.CalcTPSA(mol),
        rotatable_bonds=rdMolDescriptors.CalcNumRotatableBonds(mol),
        heavy_atoms=mol.GetNumHeavyAtoms(),
    )
