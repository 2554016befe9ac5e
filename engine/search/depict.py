"""2D depictions (RDKit SVG) for search results."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=4096)
def molecule_svg(smiles: str, width: int = 240, height: int = 180) -> str | None:
    """An SVG drawing of `smiles`, or None when RDKit cannot parse it."""
    from rdkit import Chem
    from rdkit.Chem.Draw import rdMolDraw2D

    mol = Chem.MolFromSmiles(smiles) if smiles else None
    if mol is None:
        return None
    drawer = rdMolDraw2D.MolDraw2DSVG(width, height)
    drawer.drawOptions().clearBackground = False
    rdMolDraw2D.PrepareAndDrawMolecule(drawer, mol)
    drawer.FinishDrawing()
    svg = drawer.GetDrawingText()
    return svg[svg.index("<svg") :]  # drop the XML prolog so the SVG can be inlined in HTML
