"""3D conformer generation with a bounded fallback chain.

ETKDGv3 (fixed seed) -> ETKDGv3 from random coordinates (rescues most failures of the initial
distance-geometry embedding, e.g. large rings) -> flat 2D depiction with z = 0 (so a catalog row is
never lost to embedding; the label tells the model/user it is not a real 3D geometry). The method
used is recorded as one of the METHOD_* constants, plus "+mmff"/"+uff" when relaxed.
"""

from __future__ import annotations

import time
from functools import cache

import numpy as np
from rdkit import Chem
from rdkit.Chem import rdDepictor, rdDistGeom, rdForceFieldHelpers

from .config import ViewConfig
from .errors import ConformerError

METHOD_ETKDG = "etkdg"
METHOD_ETKDG_RANDOM_COORDS = "etkdg_random_coords"
METHOD_2D_COORDS = "2d_coords"
MMFF_SUFFIX = "+mmff"
UFF_SUFFIX = "+uff"
CONFORMER_METHODS: tuple[str, ...] = (METHOD_ETKDG, METHOD_ETKDG_RANDOM_COORDS, METHOD_2D_COORDS)


@cache
def embed_parameters(seed: int, timeout_s: int, max_iterations: int, random_coords: bool):
    """ETKDGv3 parameters, built once per setting (creating them per molecule is measurable)."""
    params = rdDistGeom.ETKDGv3()
    params.randomSeed = seed
    params.timeout = timeout_s
    params.maxIterations = max_iterations
    params.useRandomCoords = random_coords
    return params


def _embed(mol_h: Chem.Mol, params: rdDistGeom.EmbedParameters) -> bool:
    """One ETKDG attempt; a separate function so tests can force failures."""
    return rdDistGeom.EmbedMolecule(mol_h, params) == 0


def _compute_2d(mol_h: Chem.Mol) -> None:
    rdDepictor.Compute2DCoords(mol_h)


def _timed_out(start: float, timeout_s: int) -> bool:
    return timeout_s > 0 and time.perf_counter() - start >= timeout_s


def _relax(mol_h: Chem.Mol, max_iters: int) -> str:
    """MMFF94 when every atom type is parameterised, else UFF; returns the method suffix."""
    if rdForceFieldHelpers.MMFFHasAllMoleculeParams(mol_h):
        rdForceFieldHelpers.MMFFOptimizeMolecule(mol_h, maxIters=max_iters)
        return MMFF_SUFFIX
    if rdForceFieldHelpers.UFFHasAllMoleculeParams(mol_h):
        rdForceFieldHelpers.UFFOptimizeMolecule(mol_h, maxIters=max_iters)
        return UFF_SUFFIX
    return ""  # no force field covers it: keep the ETKDG geometry (label shows no suffix)


def embed_conformer(mol_h: Chem.Mol, config: ViewConfig) -> tuple[np.ndarray, str]:
    """Embeds `mol_h` (hydrogens explicit) in place; returns ((n_atoms, 3) float32, method)."""
    key = (config.seed, config.embed_timeout_s, config.embed_max_iterations)
    method = ""
    start = time.perf_counter()
    if _embed(mol_h, embed_parameters(*key, False)):
        method = METHOD_ETKDG
    # A first attempt that ran into the timeout would most likely time out again: go to 2D.
    elif not _timed_out(start, config.embed_timeout_s) and _embed(mol_h, embed_parameters(*key, True)):
        method = METHOD_ETKDG_RANDOM_COORDS
    if method:
        if config.mmff_relax:
            method += _relax(mol_h, config.relax_max_iters)
    else:
        mol_h.RemoveAllConformers()
        try:
            _compute_2d(mol_h)
        except Exception as exc:  # RDKit depiction errors have no common base class
            raise ConformerError(f"ETKDG and 2D coordinate generation failed: {exc}") from None
        method = METHOD_2D_COORDS  # a flat geometry is not worth relaxing
    return mol_h.GetConformer().GetPositions().astype(np.float32), method
