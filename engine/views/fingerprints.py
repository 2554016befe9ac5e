"""Morgan fingerprints (radius 2, 2048 bits): the one fingerprint of the project.

The nearest-neighbour caption baseline and the captioner's reference look-up both rank molecules by
Tanimoto similarity of these bits, so "the most similar described molecule" means the same thing
in a report and in a prompt.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from rdkit import Chem, DataStructs, rdBase
from rdkit.Chem import rdFingerprintGenerator

FP_RADIUS = 2
FP_BITS = 2048


def _generator():
    return rdFingerprintGenerator.GetMorganGenerator(radius=FP_RADIUS, fpSize=FP_BITS)


def morgan_bitvects(smiles: Sequence[str]) -> list[DataStructs.ExplicitBitVect]:
    """One bit vector per SMILES; an unparsable SMILES gets the empty vector (similar to nothing)."""
    generator = _generator()
    out = []
    with rdBase.BlockLogs():
        for s in smiles:
            mol = Chem.MolFromSmiles(s)
            out.append(
                generator.GetFingerprint(mol) if mol is not None else DataStructs.ExplicitBitVect(FP_BITS)
            )
    return out


def morgan_matrix(smiles: Sequence[str]) -> np.ndarray:
    """(N, FP_BITS) float32 0/1."""
    matrix = np.zeros((len(smiles), FP_BITS), dtype=np.float32)
    for row, fp in enumerate(morgan_bitvects(smiles)):
        matrix[row, list(fp.GetOnBits())] = 1.0
    return matrix


def bitvects_to_bytes(fingerprints: Sequence[DataStructs.ExplicitBitVect]) -> list[bytes]:
    """RDKit's own binary form of each vector (what a Parquet binary column stores)."""
    return [fp.ToBinary() for fp in fingerprints]


def bitvects_from_bytes(blobs: Sequence[bytes]) -> list[DataStructs.ExplicitBitVect]:
    return [DataStructs.ExplicitBitVect(blob) for blob in blobs]
