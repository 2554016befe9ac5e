"""SMARTS substructure filter, checked with RDKit on candidate hits (RDKit imported on first use)."""

from __future__ import annotations

from typing import Any

from mvclam.engine.search.errors import SearchError


def compile_smarts(smarts: str | None) -> Any | None:
    """The RDKit query molecule for `smarts`, ``None`` for no filter; SearchError if invalid."""
    if not smarts:
        return None
    from rdkit import Chem

    pattern = Chem.MolFromSmarts(smarts)
    if pattern is None:
        raise SearchError(f"invalid SMARTS {smarts!r}")
    return pattern


def matches_smarts(pattern: Any, smiles: str | None) -> bool:
    """True when `smiles` parses and contains the compiled `pattern`."""
    from rdkit import Chem

    mol = Chem.MolFromSmiles(smiles) if smiles else None
    return mol is not None and mol.HasSubstructMatch(pattern)
