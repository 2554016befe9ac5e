"""Molecule views of MV-CLAM: standardisation, 2D graph view, 3D conformer view, Arrow storage
and collation into padded tensors.

    views = compute_views("CC(=O)Oc1ccccc1C(=O)O")             # raises ViewError
    results = compute_views_batch(smiles_list, ViewConfig())    # never raises per row
    table = views_to_arrow([r.views for r in results if r.ok])  # store; views_from_arrow reads back
    batch = collate_views(views_from_arrow(table))              # tensors for the encoders
"""

from typing import TYPE_CHECKING

from .arrow import VIEW_SCHEMA, views_from_arrow, views_to_arrow
from .config import DRUG_LIKE_ELEMENTS, ViewConfig
from .conformer import (
    CONFORMER_METHODS,
    METHOD_2D_COORDS,
    METHOD_ETKDG,
    METHOD_ETKDG_RANDOM_COORDS,
    MMFF_SUFFIX,
    UFF_SUFFIX,
)
from .errors import (
    ConformerError,
    EmptyInputError,
    InchiKeyError,
    NoHeavyAtomsError,
    SanitizationError,
    SmilesParseError,
    TooManyAtomsError,
    UnexpectedViewError,
    UnsupportedElementError,
    ViewError,
    ViewErrorCode,
)
from .features import (
    ATOM_FEATURE_CARDINALITIES,
    ATOM_FEATURE_NAMES,
    ATOM_FEATURE_SPEC,
    BOND_TYPES,
    ELEMENTS,
    NUM_ATOM_FEATURES,
    NUM_ELEMENT_TYPES,
)
from .molecule_views import (
    MoleculeViews,
    ViewResult,
    compute_2d_view,
    compute_3d_view,
    compute_views,
    compute_views_batch,
)
from .properties import MoleculeProperties, molecule_properties
from .standardize import canonical_smiles, inchikey, standardize

if TYPE_CHECKING:
    from .collate import ViewBatch, collate_views


def __getattr__(name: str):
    # torch is imported lazily: catalog workers that only compute and store views never need it.
    if name in ("ViewBatch", "collate_views"):
        from . import collate

        return getattr(collate, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ATOM_FEATURE_CARDINALITIES",
    "ATOM_FEATURE_NAMES",
    "ATOM_FEATURE_SPEC",
    "BOND_TYPES",
    "CONFORMER_METHODS",
    "DRUG_LIKE_ELEMENTS",
    "ELEMENTS",
    "METHOD_2D_COORDS",
    "METHOD_ETKDG",
    "METHOD_ETKDG_RANDOM_COORDS",
    "MMFF_SUFFIX",
    "NUM_ATOM_FEATURES",
    "NUM_ELEMENT_TYPES",
    "UFF_SUFFIX",
    "VIEW_SCHEMA",
    "ConformerError",
    "EmptyInputError",
    "InchiKeyError",
    "MoleculeProperties",
    "MoleculeViews",
    "NoHeavyAtomsError",
    "SanitizationError",
    "SmilesParseError",
    "TooManyAtomsError",
    "UnexpectedViewError",
    "UnsupportedElementError",
    "ViewBatch",
    "ViewConfig",
    "ViewError",
    "ViewErrorCode",
    "ViewResult",
    "canonical_smiles",
    "collate_views",
    "compute_2d_view",
    "compute_3d_view",
    "compute_views",
    "compute_views_batch",
    "inchikey",
    "molecule_properties",
    "standardize",
    "views_from_arrow",
    "views_to_arrow",
]
