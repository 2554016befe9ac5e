"""Padding a list of MoleculeViews into dense model tensors.

Padded positions are all-zero in every tensor (feature code 0 is the padding index of every
feature column) and False in `atom_mask`. Arrays are filled in numpy and converted once, which is
far cheaper than building and stacking one tensor per molecule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch

from .features import NUM_ATOM_FEATURES
from .molecule_views import MoleculeViews


@dataclass
class ViewBatch:
    atom_features: torch.Tensor  # (B, N, F) long, 0 at padding
    atom_mask: torch.Tensor  # (B, N) bool, True = real atom
    adjacency: torch.Tensor  # (B, N, N) float 0/1, symmetric, no self-loops
    topological_distance: torch.Tensor  # (B, N, N) float bonds; 255 = capped/disconnected; 0 at padding
    coordinates: torch.Tensor  # (B, N, 3) float Angstrom, 0 at padding

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
    if b:
        bonds = np.concatenate([v.bonds for v in views]).astype(np.int64)
        rows = np.repeat(np.arange(b), [len(v.bonds) for v in views])
        adjacency[rows, bonds[:, 0], bonds[:, 1]] = 1.0
        adjacency[rows, bonds[:, 1], bonds[:, 0]] = 1.0

    return ViewBatch(
        atom_features=torch.from_numpy(features).long(),
        atom_mask=torch.from_numpy(mask),
        adjacency=torch.from_numpy(adjacency),
        topological_distance=torch.from_numpy(distances),
        coordinates=torch.from_numpy(coordinates),
    )
