"""Padding a list of MoleculeViews into dense model tensors.

Padded positions are all-zero in every tensor (feature code 0 is the padding index of every
feature column) and False in `atom_mask`. Arrays are filled in numpy and converted once, which is
far cheaper than building and stacking one tensor per molecule.

`atom_environments` are ECFP-style atom-environment identifiers (Morgan/Weisfeiler-Lehman hashing
of the stored atom features and bond types, radius 0..ENVIRONMENT_RADIUS): the substructure
identity Mol2vec gives Text2Mol's graph encoder. They are derived from the stored views, so tables
written before they existed can be re-encoded without recomputing anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch

from .features import NUM_ATOM_FEATURES
from .molecule_views import MoleculeViews

ENVIRONMENT_RADIUS = 2  # ECFP4-sized environments: radius 0, 1 and 2 identifiers per atom


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a fixed, platform-independent 64-bit hash (numpy wraps on overflow)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def atom_environment_ids(
    features: np.ndarray, bonds: np.ndarray, bond_types: np.ndarray, radius: int = ENVIRONMENT_RADIUS
) -> np.ndarray:
    """(A, F) atom codes + (E, 2) bonds over the same flat atom index → (A, radius + 1) int64 ids ≥ 0.

    Identifier r of an atom hashes its radius-(r-1) identifier with the multiset of (bond type,
    neighbour identifier) pairs: a sum of hashes, so neighbour order never matters."""
    with np.errstate(over="ignore"):
        weights = _mix64(np.arange(1, features.shape[1] + 1, dtype=np.uint64))
        current = _mix64((features.astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64))
        ids = [current]
        src = np.concatenate([bonds[:, 0], bonds[:, 1]]).astype(np.int64)
        dst = np.concatenate([bonds[:, 1], bonds[:, 0]]).astype(np.int64)
        bond_salt = _mix64(np.tile(bond_types, 2).astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15))
        for r in range(1, radius + 1):
            neighbour_sum = np.zeros_like(current)
            np.add.at(neighbour_sum, dst, _mix64(current[src] ^ bond_salt))
            current = _mix64(_mix64(current + np.uint64(r)) ^ neighbour_sum)
            ids.append(current)
    # 62 bits keep the ids non-negative in int64; the model reduces them modulo its bucket count.
    return (np.stack(ids, axis=1) >> np.uint64(2)).astype(np.int64)


@dataclass
class ViewBatch:
    atom_features: torch.Tensor  # (B, N, F) long, 0 at padding
    atom_mask: torch.Tensor  # (B, N) bool, True = real atom
    adjacency: torch.Tensor  # (B, N, N) float 0/1, symmetric, no self-loops
    topological_distance: torch.Tensor  # (B, N, N) float bonds; 255 = capped/disconnected; 0 at padding
    coordinates: torch.Tensor  # (B, N, 3) float Angstrom, 0 at padding
    atom_environments: torch.Tensor  # (B, N, ENVIRONMENT_RADIUS + 1) long ids ≥ 0, 0 at padding

    @property
    def element_indices(self) -> torch.Tensor:
        """(B, N) long atom types for the 3D encoder (feature column 0; 0 = padding)."""
        return self.atom_features[..., 0]

    @property
    def num_atoms(self) -> torch.Tensor:
        """(B,) long number of real atoms per molecule."""
        return self.atom_mask.sum(dim=1)

    def __len__(self) -> int:
        return self.atom_mask.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> ViewBatch:
        return ViewBatch(
            **{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)}
        )


def collate_views(views: Sequence[MoleculeViews], pad_to: int | None = None) -> ViewBatch:
    """Pads to the largest molecule of the batch, or to `pad_to` (fixed shapes, e.g. for compiled
    models). A molecule larger than `pad_to` raises ValueError: cropping would change the molecule."""
    sizes = np.array([v.num_atoms for v in views], dtype=np.int64)
    largest = int(sizes.max()) if len(views) else 0
    if pad_to is not None and pad_to < largest:
        raise ValueError(f"pad_to={pad_to} is smaller than the largest molecule ({largest} atoms)")
    n = largest if pad_to is None else pad_to
    b = len(views)

    features = np.zeros((b, n, NUM_ATOM_FEATURES), dtype=np.uint8)
    distances = np.zeros((b, n, n), dtype=np.float32)
    coordinates = np.zeros((b, n, 3), dtype=np.float32)
    for row, view in enumerate(views):
        k = view.num_atoms
        features[row, :k] = view.atom_features
        distances[row, :k, :k] = view.topological_distance
        coordinates[row, :k] = view.coordinates
    mask = np.arange(n)[None, :] < sizes[:, None]

    # All bonds of the batch scattered in one indexing operation.
    adjacency = np.zeros((b, n, n), dtype=np.float32)
    environments = np.zeros((b, n, ENVIRONMENT_RADIUS + 1), dtype=np.int64)
    if b:
        bonds = np.concatenate([v.bonds for v in views]).astype(np.int64)
        rows = np.repeat(np.arange(b), [len(v.bonds) for v in views])
        adjacency[rows, bonds[:, 0], bonds[:, 1]] = 1.0
        adjacency[rows, bonds[:, 1], bonds[:, 0]] = 1.0
        environments[mask] = atom_environment_ids(
            features[mask],
            # Bonds re-indexed into the flat list of real atoms (row-major, as features[mask]).
            bonds + (np.cumsum(sizes) - sizes)[rows, None],
            np.concatenate([v.bond_types for v in views]),
        )

    return ViewBatch(
        atom_features=torch.from_numpy(features).long(),
        atom_mask=torch.from_numpy(mask),
        adjacency=torch.from_numpy(adjacency),
        topological_distance=torch.from_numpy(distances),
        coordinates=torch.from_numpy(coordinates),
        atom_environments=torch.from_numpy(environments),
    )
