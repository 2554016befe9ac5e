"""Configuration of molecule standardisation and view computation.

A `ViewConfig` fully determines the views of a molecule (same config + same RDKit version ->
identical arrays), so it should be stored next to any catalog of precomputed views.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from .features import SYMBOL_TO_ATOMIC_NUMBER

# Elements of drug-like and natural-product chemistry (what MOSES/ChEMBL/ChEBI-20 organics contain)
# for which ETKDG/MMFF/UFF are well parameterised. Metals and noble gases are excluded on purpose:
# covalent metal complexes get meaningless distance-geometry geometries and are rare in the
# caption corpora. Metal *counter-ions* never reach this check: the largest organic fragment is
# kept first (see standardize.py).
DRUG_LIKE_ELEMENTS: tuple[str, ...] = (
    "H", "B", "C", "N", "O", "F", "Si", "P", "S", "Cl", "As", "Se", "Br", "Te", "I",
)  # fmt: skip

# int16 holds atom indices and `num_atoms` in the stored views.
_MAX_ATOMS_LIMIT = 32767


@dataclass(frozen=True)
class ViewConfig:
    """Options for `standardize` / `compute_views`.

    max_atoms: molecules with more atoms (in the view, i.e. heavy atoms unless `include_hydrogens`)
        are rejected with TooManyAtomsError; never cropped, since a cropped graph is another molecule.
    include_hydrogens: views over all atoms (explicit H). Hydrogens are always added for embedding
        and, by default, removed afterwards: heavy-atom views are ~2x smaller and MAT/Uni-Mol style
        encoders work on heavy atoms.
    mmff_relax: MMFF94 optimisation after ETKDG (UFF when MMFF lacks parameters). Off by default:
        ETKDG geometries are good enough for an encoder and relaxation costs about as much again.
    seed: ETKDG random seed; fixed so the same molecule always gets the same conformer.
    allowed_elements: element symbols accepted after fragment selection (default DRUG_LIKE_ELEMENTS).
    neutralize: neutralise charges (rdMolStandardize.Uncharger). Off by default because ChEBI-style
        descriptions distinguish conjugate acids and bases ("... is the conjugate base of ..."):
        neutralising would give two differently described entries the same molecule.
    embed_timeout_s: RDKit's per-attempt wall-clock bound for ETKDG (EmbedParameters.timeout) so a
        pathological molecule cannot hang a worker; 0 disables it.
    embed_max_iterations: EmbedParameters.maxIterations (0 = RDKit default, 10 x number of atoms).
    relax_max_iters: iteration cap of the MMFF/UFF optimisation.
    """

    max_atoms: int = 256
    include_hydrogens: bool = False
    mmff_relax: bool = False
    seed: int = 42
    allowed_elements: tuple[str, ...] = DRUG_LIKE_ELEMENTS
    neutralize: bool = False
    embed_timeout_s: int = 20
    embed_max_iterations: int = 0
    relax_max_iters: int = 200

    def __post_init__(self) -> None:
        if not 1 <= self.max_atoms <= _MAX_ATOMS_LIMIT:
            raise ValueError(f"max_atoms must be in [1, {_MAX_ATOMS_LIMIT}], got {self.max_atoms}")
        if not 0 <= self.seed < 2**31:
            raise ValueError(f"seed must be in [0, 2**31), got {self.seed}")
        for name in ("embed_timeout_s", "embed_max_iterations", "relax_max_iters"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        elements = tuple(self.allowed_elements)  # accept lists (e.g. from YAML/JSON)
        unknown = [s for s in elements if s not in SYMBOL_TO_ATOMIC_NUMBER]
        if unknown:
            raise ValueError(f"unknown element symbol(s) in allowed_elements: {', '.join(unknown)}")
        object.__setattr__(self, "allowed_elements", elements)

    @cached_property
    def allowed_atomic_numbers(self) -> frozenset[int]:
        return frozenset(SYMBOL_TO_ATOMIC_NUMBER[s] for s in self.allowed_elements)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["allowed_elements"] = list(self.allowed_elements)  # JSON/YAML friendly
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ViewConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:  # a typo in a config file must not silently fall back to a default
            raise ValueError(f"unknown ViewConfig key(s): {', '.join(unknown)}")
        return cls(**data)
