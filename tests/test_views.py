"""Tests of mvclam.engine.views: standardisation, 2D/3D views, batch API, Arrow storage, collation."""

from __future__ import annotations

import importlib
import json
import math
import pickle
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from rdkit import Chem

from mvclam.engine.views import (
    ATOM_FEATURE_CARDINALITIES,
    ATOM_FEATURE_NAMES,
    ATOM_FEATURE_SPEC,
    BOND_TYPES,
    DRUG_LIKE_ELEMENTS,
    ELEMENTS,
    METHOD_2D_COORDS,
    METHOD_ETKDG,
    METHOD_ETKDG_RANDOM_COORDS,
    NUM_ATOM_FEATURES,
    NUM_ELEMENT_TYPES,
    VIEW_SCHEMA,
    ConformerError,
    EmptyInputError,
    InchiKeyError,
    MoleculeViews,
    NoHeavyAtomsError,
    SanitizationError,
    SmilesParseError,
    TooManyAtomsError,
    UnexpectedViewError,
    UnsupportedElementError,
    ViewBatch,
    ViewConfig,
    ViewError,
    ViewErrorCode,
    collate_views,
    compute_2d_view,
    compute_3d_view,
    compute_views,
    compute_views_batch,
    inchikey,
    molecule_properties,
    standardize,
    views_from_arrow,
    views_to_arrow,
)
from mvclam.engine.views.collate import ENVIRONMENT_RADIUS

conformer = importlib.import_module("mvclam.engine.views.conformer")

ASPIRIN = "CC(=O)Oc1ccccc1C(=O)O"
IBUPROFEN = "CC(C)Cc1ccc(cc1)C(C)C(=O)O"
GLYCINE_ZWITTERION = "[NH3+]CC(=O)[O-]"
CROWN_18_6 = "C1COCCOCCOCCOCCOCCO1"
CYCLOSPORIN_A = (
    "CC[C@H]1C(=O)N(CC(=O)N([C@H](C(=O)N[C@H](C(=O)N([C@H](C(=O)N[C@H](C(=O)N[C@@H](C(=O)N([C@H]"
    "(C(=O)N([C@H](C(=O)N([C@H](C(=O)N([C@H](C(=O)N1)[C@@H]([C@H](C)C/C=C/C)O)C)C(C)C)C)CC(C)C)C)"
    "CC(C)C)C)C)C)CC(C)C)C)C(C)C)CC(C)C)C)C"
)
# ChEBI-20 (validation split) writes bond directions with doubled backslashes; RDKit parses them as given.
CHEBI_DOUBLE_BACKSLASH = r"CC/C=C\\C/C=C\\C/C=C\\CCCCCC(=O)OC(CC(=O)[O-])C[N+](C)(C)C"

SPEC = {column.name: column for column in ATOM_FEATURE_SPEC}
COL = {name: i for i, name in enumerate(ATOM_FEATURE_NAMES)}


def code(column: str, category: str) -> int:
    return SPEC[column].code(category)


@pytest.fixture(scope="module")
def aspirin() -> MoleculeViews:
    return compute_views(ASPIRIN)


@pytest.fixture(scope="module")
def small_views() -> list[MoleculeViews]:
    """Molecules of different sizes, including one without bonds and one with hydrogens."""
    views = [compute_views(s) for s in (ASPIRIN, "C", GLYCINE_ZWITTERION, IBUPROFEN, "C/C=C/Cl")]
    return [*views, compute_views("CCO", ViewConfig(include_hydrogens=True))]


def dihedral(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, p3: np.ndarray) -> float:
    b0, b1, b2 = p0 - p1, p2 - p1, p3 - p2
    b1 = b1 / np.linalg.norm(b1)
    v = b0 - np.dot(b0, b1) * b1
    w = b2 - np.dot(b2, b1) * b1
    return math.degrees(math.atan2(np.dot(np.cross(b1, v), w), np.dot(v, w)))


# --- errors and config -------------------------------------------------------------------------


def test_errors_carry_code_reason_and_pickle():
    cases = {
        EmptyInputError: ViewErrorCode.EMPTY_INPUT,
        SmilesParseError: ViewErrorCode.PARSE_ERROR,
        SanitizationError: ViewErrorCode.SANITIZATION_ERROR,
        UnsupportedElementError: ViewErrorCode.UNSUPPORTED_ELEMENT,
        TooManyAtomsError: ViewErrorCode.TOO_MANY_ATOMS,
        NoHeavyAtomsError: ViewErrorCode.NO_HEAVY_ATOMS,
        InchiKeyError: ViewErrorCode.INCHI_FAILED,
        ConformerError: ViewErrorCode.EMBEDDING_FAILED,
        UnexpectedViewError: ViewErrorCode.UNEXPECTED,
    }
    for cls, expected in cases.items():
        error = cls("some reason")
        assert isinstance(error, ViewError)
        assert error.code is expected and error.reason == "some reason"
        assert str(error) == f"{expected.value}: some reason"
        clone = pickle.loads(pickle.dumps(error))  # errors cross process boundaries in workers
        assert type(clone) is cls and clone.code is expected and clone.reason == "some reason"
    assert ViewError("x", "parse_error").code is ViewErrorCode.PARSE_ERROR
    with pytest.raises(TypeError):
        ViewError("no code given")


def test_config_round_trip_and_validation():
    config = ViewConfig(max_atoms=100, mmff_relax=True, allowed_elements=["C", "N", "O"], seed=7)
    assert config.allowed_elements == ("C", "N", "O")  # lists (from YAML/JSON) become tuples
    assert config.allowed_atomic_numbers == frozenset({6, 7, 8})
    data = json.loads(json.dumps(config.to_dict()))
    assert ViewConfig.from_dict(data) == config
    assert ViewConfig().allowed_elements == DRUG_LIKE_ELEMENTS
    assert set(DRUG_LIKE_ELEMENTS) == {
        *("H", "B", "C", "N", "O", "F", "Si", "P", "S", "Cl", "As", "Se", "Br", "Te", "I")
    }
    with pytest.raises(ValueError, match="max_atom"):
        ViewConfig.from_dict({"max_atom": 5})
    with pytest.raises(ValueError, match="Xx"):
        ViewConfig(allowed_elements=("C", "Xx"))
    with pytest.raises(ValueError, match="max_atoms"):
        ViewConfig(max_atoms=0)
    with pytest.raises(ValueError, match="embed_timeout_s"):
        ViewConfig(embed_timeout_s=-1)


def test_etkdg_parameters_carry_seed_and_bounds():
    params = conformer.embed_parameters(123, 7, 50, True)
    assert (params.randomSeed, params.timeout, params.maxIterations) == (123, 7, 50)
    assert params.useRandomCoords is True
    assert conformer.embed_parameters(123, 7, 50, True) is params  # built once, reused


# --- feature spec ------------------------------------------------------------------------------


def test_feature_spec_layout():
    assert ATOM_FEATURE_NAMES[0] == "element"
    assert len(ATOM_FEATURE_NAMES) == len(ATOM_FEATURE_CARDINALITIES) == NUM_ATOM_FEATURES == 10
    assert NUM_ELEMENT_TYPES == ATOM_FEATURE_CARDINALITIES[0] == len(ELEMENTS) + 2
    assert set(DRUG_LIKE_ELEMENTS) <= set(ELEMENTS)
    for column in ATOM_FEATURE_SPEC:  # 0 = padding, 1..K = categories, K + 1 = other
        assert column.cardinality == len(column.categories) + 2 == column.other + 1
    assert ATOM_FEATURE_CARDINALITIES[1:] == (9, 7, 9, 4, 4, 9, 8, 5, 5)
    assert BOND_TYPES == ("none", "single", "double", "triple", "aromatic", "other")


def test_atom_feature_values():
    # Two organic fragments: the larger one (glycine, 10 atoms with H; acetonitrile has 6) is kept.
    views = compute_views("CC#N." + GLYCINE_ZWITTERION)
    assert views.canonical_smiles == GLYCINE_ZWITTERION
    f = views.atom_features
    assert f[0, COL["element"]] == ELEMENTS.index("N") + 1
    assert f[0, COL["formal_charge"]] == code("formal_charge", "+1")
    assert f[0, COL["num_hs"]] == code("num_hs", "3")
    assert f[4, COL["formal_charge"]] == code("formal_charge", "-1")
    assert f[2, COL["degree"]] == code("degree", "3")
    assert f[2, COL["hybridization"]] == code("hybridization", "SP2")

    nitrile = compute_views("N#CC1CC1").atom_features
    assert nitrile[0, COL["hybridization"]] == code("hybridization", "SP")
    assert list(nitrile[2:, COL["ring_size"]]) == [code("ring_size", "3")] * 3
    assert list(nitrile[:2, COL["in_ring"]]) == [code("in_ring", "no")] * 2

    benzene = compute_2d_view(Chem.MolFromSmiles("c1ccccc1Br")).atom_features
    assert set(benzene[:6, COL["aromatic"]]) == {code("aromatic", "yes")}
    assert set(benzene[:6, COL["ring_size"]]) == {code("ring_size", "6")}
    assert benzene[6, COL["element"]] == ELEMENTS.index("Br") + 1

    platinum = compute_2d_view(Chem.MolFromSmiles("C[Pt]")).atom_features  # in the vocabulary
    assert platinum[1, 0] == ELEMENTS.index("Pt") + 1
    exotic = compute_2d_view(Chem.MolFromSmiles("C[U]")).atom_features  # not in it: "other"
    assert exotic[1, 0] == SPEC["element"].other
    for features in (f, nitrile, benzene, platinum, exotic):  # never padding, always in range
        assert (features >= 1).all() and (features < np.array(ATOM_FEATURE_CARDINALITIES)).all()


# --- standardisation ---------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [None, "", "   ", "\n", "\t \n", float("nan"), Chem.Mol()])
def test_empty_inputs(bad):
    with pytest.raises(EmptyInputError) as info:
        compute_views(bad)
    assert info.value.code is ViewErrorCode.EMPTY_INPUT


@pytest.mark.parametrize(
    ("smiles", "detail"),
    [("C1CC", "unclosed ring"), ("xyz", "syntax error"), ("C(C", "parenthes"), ("CC)C", "")],
)
def test_parse_errors_are_classified_and_silent(capfd, smiles, detail):
    with pytest.raises(SmilesParseError) as info:
        standardize(smiles)
    assert info.value.reason.startswith(f"could not parse SMILES {smiles!r}")
    assert detail in info.value.reason
    assert capfd.readouterr().err == ""  # RDKit's C++ logging is silenced


@pytest.mark.parametrize(
    ("smiles", "detail"), [("C(C)(C)(C)(C)C", "valence"), ("c1cccc1", "kekulize"), ("[NH5]", "valence")]
)
def test_sanitization_errors(capfd, smiles, detail):
    with pytest.raises(SanitizationError) as info:
        standardize(smiles)
    assert detail in info.value.reason.lower()
    assert smiles in info.value.reason
    assert capfd.readouterr().err == ""


def test_unsanitisable_mol_input():
    mol = Chem.MolFromSmiles("C(C)(C)(C)(C)C", sanitize=False)
    with pytest.raises(SanitizationError, match="valence"):
        standardize(mol)


def test_wrong_input_type():
    with pytest.raises(TypeError, match="int"):
        standardize(123)


@pytest.mark.parametrize(
    ("salt", "parent"),
    [
        ("CC(=O)[O-].[Na+]", "CC(=O)[O-]"),  # metal counter-ion dropped, charge kept
        ("Cl.CCN", "CCN"),  # hydrochloride
        ("CCN.Cl", "CCN"),
        ("O.O.OC(=O)c1ccccc1", "O=C(O)c1ccccc1"),  # hydrate
        ("[Na+].[Na+].[O-]C(=O)CCC(=O)[O-]", "O=C([O-])CCC(=O)[O-]"),
    ],
)
def test_salts_keep_largest_organic_fragment(salt, parent):
    assert Chem.MolToSmiles(standardize(salt)) == parent


def test_metal_counter_ion_dropped_from_chebi_heme():
    heme = (
        "CC1=C(C2=CC3=NC(=CC4=C(C(=C([N-]4)C=C5C(=C(C(=N5)C=C1[N-]2)C=C)C)[C@H](CC/C=C(\\\\C)/CC/C=C"
        "(\\\\C)/CCC=C(C)C)O)C)C(=C3CCC(=O)O)C=O)CCC(=O)O.[Fe+3]"
    )
    mol = standardize(heme)
    symbols = {atom.GetSymbol() for atom in mol.GetAtoms()}
    assert "Fe" not in symbols and symbols == {"C", "N", "O"}
    assert len(Chem.GetMolFrags(mol)) == 1


@pytest.mark.parametrize(
    ("smiles", "elements"),
    [
        ("N[Pt](N)(Cl)Cl", "Pt"),  # cisplatin, covalent
        ("N.N.Cl[Pt]Cl", "Pt"),  # cisplatin, disconnected: no organic fragment, kept whole
        ("C1=CC=C[CH]1[Fe][CH]1C=CC=C1", "Fe"),  # covalent ferrocene-like
        ("C[Pt]CC[Fe]C[Pt]C", "Pt, Fe"),  # each element once, in order of appearance
        ("[Na+].[Cl-]", "Na"),
        ("*CC(=O)O", "*"),  # ChEBI class entries with R groups
    ],
)
def test_unsupported_elements(smiles, elements):
    with pytest.raises(UnsupportedElementError) as info:
        standardize(smiles)
    assert info.value.reason == f"unsupported element(s): {elements}"


def test_allowed_elements_are_configurable():
    config = ViewConfig(allowed_elements=(*DRUG_LIKE_ELEMENTS, "Pt"))
    assert standardize("N[Pt](N)(Cl)Cl", config).GetNumAtoms() == 5
    with pytest.raises(UnsupportedElementError, match="Cl"):
        standardize("CCCl", ViewConfig(allowed_elements=("C", "H")))


def test_charged_species_are_kept_unless_neutralized():
    assert Chem.MolToSmiles(standardize(GLYCINE_ZWITTERION)) == GLYCINE_ZWITTERION
    assert Chem.MolToSmiles(standardize("C[N+](C)(C)C")) == "C[N+](C)(C)C"
    neutral = ViewConfig(neutralize=True)
    assert Chem.MolToSmiles(standardize(GLYCINE_ZWITTERION, neutral)) == "NCC(=O)O"
    assert Chem.MolToSmiles(standardize("CC(=O)[O-].[Na+]", neutral)) == "CC(=O)O"
    assert Chem.MolToSmiles(standardize("C[N+](C)(C)C", neutral)) == "C[N+](C)(C)C"  # cannot lose charge
    # Standard InChI merges a zwitterion with its neutral form; canonical SMILES do not.
    zwitterion, glycine = compute_views(GLYCINE_ZWITTERION), compute_views("NCC(=O)O")
    assert zwitterion.inchikey == glycine.inchikey == "DHMQDGOQFOQNFH-UHFFFAOYSA-N"
    assert zwitterion.canonical_smiles != glycine.canonical_smiles


def test_too_many_atoms_is_rejected_never_cropped():
    with pytest.raises(TooManyAtomsError) as info:
        standardize("C" * 300)
    assert info.value.reason == "molecule has 300 heavy atoms; max_atoms is 256"
    assert standardize("C" * 300, ViewConfig(max_atoms=300)).GetNumAtoms() == 300
    with pytest.raises(TooManyAtomsError, match="7 heavy atoms; max_atoms is 6"):
        compute_views("CCCCCCC", ViewConfig(max_atoms=6))
    assert compute_views("CCCCCC", ViewConfig(max_atoms=6)).num_atoms == 6
    with pytest.raises(TooManyAtomsError, match="11 atoms including hydrogens; max_atoms is 10"):
        standardize("CCC", ViewConfig(max_atoms=10, include_hydrogens=True))


def test_no_heavy_atoms():
    with pytest.raises(NoHeavyAtomsError):
        standardize("[H][H]")


def test_chebi_double_backslash_smiles():
    assert "\\\\" in CHEBI_DOUBLE_BACKSLASH
    views = compute_views(CHEBI_DOUBLE_BACKSLASH)
    single = CHEBI_DOUBLE_BACKSLASH.replace("\\\\", "\\")
    assert views.canonical_smiles == Chem.MolToSmiles(Chem.MolFromSmiles(single))
    assert views.canonical_smiles.count("\\") == 3  # three Z double bonds survive
    assert views.conformer_method == METHOD_ETKDG


def test_mol_input_is_copied_and_matches_smiles():
    mol_h = Chem.AddHs(Chem.MolFromSmiles(IBUPROFEN))
    n_before = mol_h.GetNumAtoms()
    views = compute_views(mol_h)
    assert mol_h.GetNumAtoms() == n_before  # caller's molecule untouched
    assert views.equals(compute_views(IBUPROFEN))


def test_inchikey_and_canonical_smiles():
    assert inchikey(Chem.MolFromSmiles("CCO")) == "LFQSCWFLJHTTHZ-UHFFFAOYSA-N"
    with pytest.raises(InchiKeyError):
        inchikey(Chem.Mol())


# --- views -------------------------------------------------------------------------------------


def test_view_shapes_dtypes_and_graph_consistency(aspirin):
    n, e = 13, 13
    assert aspirin.canonical_smiles == ASPIRIN and aspirin.num_atoms == n
    assert aspirin.inchikey == "BSYNRYMUTXBXSQ-UHFFFAOYSA-N"
    assert aspirin.atom_features.shape == (n, NUM_ATOM_FEATURES) and aspirin.atom_features.dtype == np.uint8
    assert aspirin.bonds.shape == (e, 2) and aspirin.bonds.dtype == np.int16
    assert aspirin.bond_types.shape == (e,) and aspirin.bond_types.dtype == np.uint8
    assert aspirin.topological_distance.shape == (n, n) and aspirin.topological_distance.dtype == np.uint8
    assert aspirin.coordinates.shape == (n, 3) and aspirin.coordinates.dtype == np.float32
    assert aspirin.conformer_method == METHOD_ETKDG
    np.testing.assert_array_equal(aspirin.element_indices, aspirin.atom_features[:, 0])

    i, j = aspirin.bonds[:, 0], aspirin.bonds[:, 1]
    assert (i < j).all()
    assert [tuple(b) for b in aspirin.bonds] == sorted(tuple(b) for b in aspirin.bonds)
    assert sorted(aspirin.bond_types.tolist()) == [1] * 5 + [2] * 2 + [4] * 6

    adjacency = aspirin.adjacency()
    assert adjacency.dtype == np.float32 and adjacency.sum() == 2 * e
    np.testing.assert_array_equal(adjacency, adjacency.T)
    assert np.diag(adjacency).sum() == 0
    distance = aspirin.topological_distance
    np.testing.assert_array_equal(distance, distance.T)
    np.testing.assert_array_equal(distance == 1, adjacency == 1)
    assert np.diag(distance).sum() == 0 and distance.max() == 6  # methyl C to ring C para to the ester O

    # Coordinates line up with the graph: every bond is 1.0-1.6 Angstrom long, non-bonded pairs are not.
    d = np.linalg.norm(aspirin.coordinates[:, None] - aspirin.coordinates[None], axis=-1)
    assert ((d[i, j] > 1.1) & (d[i, j] < 1.6)).all()
    assert (d[distance >= 2] > 2.0).all()


def test_rows_follow_canonical_smiles_atom_order():
    for smiles in ("OC(=O)c1ccccc1OC(C)=O", "Clc1ccc(Br)cc1N", CROWN_18_6):
        views = compute_views(smiles)
        mol = Chem.MolFromSmiles(views.canonical_smiles)
        expected = [ELEMENTS.index(atom.GetSymbol()) + 1 for atom in mol.GetAtoms()]
        assert views.element_indices.tolist() == expected


def test_views_do_not_depend_on_how_the_smiles_is_written():
    reference = compute_views(IBUPROFEN)
    mol = Chem.MolFromSmiles(IBUPROFEN)
    variants = {Chem.MolToSmiles(mol, doRandom=True, canonical=False) for _ in range(6)}
    assert len(variants) > 2
    for variant in variants:
        assert compute_views(variant).equals(reference)  # coordinates included


def test_conformer_is_3d_and_deterministic():
    first = compute_views(IBUPROFEN)
    second = compute_views(IBUPROFEN, ViewConfig(seed=42))
    np.testing.assert_array_equal(first.coordinates, second.coordinates)
    centered = first.coordinates - first.coordinates.mean(axis=0)
    assert np.linalg.svd(centered, compute_uv=False)[2] > 0.3  # not flat
    other_seed = compute_views(IBUPROFEN, ViewConfig(seed=7))
    assert not np.allclose(other_seed.coordinates, first.coordinates, atol=1e-3)
    np.testing.assert_array_equal(other_seed.atom_features, first.atom_features)


def test_tetrahedral_stereo_survives():
    l_ala, d_ala = compute_views("C[C@@H](C(=O)O)N"), compute_views("C[C@H](C(=O)O)N")
    assert l_ala.canonical_smiles == "C[C@H](N)C(=O)O" and d_ala.canonical_smiles == "C[C@@H](N)C(=O)O"
    assert l_ala.atom_features[1, COL["cip"]] == code("cip", "S")
    assert d_ala.atom_features[1, COL["cip"]] == code("cip", "R")
    assert {l_ala.atom_features[1, COL["chirality"]], d_ala.atom_features[1, COL["chirality"]]} == {
        code("chirality", "CW"),
        code("chirality", "CCW"),
    }
    np.testing.assert_array_equal(
        np.delete(l_ala.atom_features, [8, 9], axis=1), np.delete(d_ala.atom_features, [8, 9], axis=1)
    )

    def signed_volume(views: MoleculeViews) -> float:  # centre 1; neighbours C0, N2, C3 in both
        c = views.coordinates
        return float(np.dot(c[0] - c[1], np.cross(c[2] - c[1], c[3] - c[1])))

    assert signed_volume(l_ala) * signed_volume(d_ala) < 0  # mirror images in 3D
    racemic = compute_views("CC(C(=O)O)N").atom_features[1]
    assert (racemic[COL["chirality"]], racemic[COL["cip"]]) == (
        code("chirality", "none"),
        code("cip", "none"),
    )


@pytest.mark.parametrize(("smiles", "cis"), [("C/C=C/C", False), ("C/C=C\\C", True), ("F/C=C\\F", True)])
def test_double_bond_stereo_survives(smiles, cis):
    views = compute_views(smiles)
    assert views.canonical_smiles == Chem.MolToSmiles(Chem.MolFromSmiles(smiles))
    assert "/" in views.canonical_smiles
    angle = abs(dihedral(*views.coordinates[:4]))
    assert angle < 20 if cis else angle > 160


def test_macrocycles():
    crown = compute_views(CROWN_18_6)
    assert crown.num_atoms == 18 and crown.conformer_method == METHOD_ETKDG
    assert set(crown.atom_features[:, COL["ring_size"]]) == {code("ring_size", "8+")}
    assert crown.topological_distance.max() == 9

    cyclosporin = compute_views(CYCLOSPORIN_A)
    assert cyclosporin.num_atoms == 85 and cyclosporin.conformer_method == METHOD_ETKDG
    assert (cyclosporin.atom_features[:, COL["chirality"]] != code("chirality", "none")).sum() == 12
    i, j = cyclosporin.bonds.T
    lengths = np.linalg.norm(cyclosporin.coordinates[i] - cyclosporin.coordinates[j], axis=1)
    assert ((lengths > 1.1) & (lengths < 1.65)).all()


def test_include_hydrogens():
    heavy = compute_views("CCO")
    full = compute_views("CCO", ViewConfig(include_hydrogens=True))
    assert full.num_atoms == 9 and full.bonds.shape == (8, 2)
    assert (full.element_indices == ELEMENTS.index("H") + 1).sum() == 6
    assert (full.element_indices[:3] == heavy.element_indices).all()  # heavy atoms first, same order
    assert list(full.atom_features[:3, COL["degree"]]) == [code("degree", "4")] * 2 + [code("degree", "2")]
    assert set(full.atom_features[3:, COL["hybridization"]]) == {code("hybridization", "S")}
    # Both embed the same hydrogen-complete molecule with the same seed: identical heavy-atom geometry.
    np.testing.assert_array_equal(full.coordinates[:3], heavy.coordinates)


def test_compute_2d_and_3d_views_directly():
    mol = Chem.MolFromSmiles("OCC1CC1")
    view_2d = compute_2d_view(mol)
    view_3d = compute_3d_view(mol, ViewConfig())
    assert view_2d.atom_features.shape == (5, NUM_ATOM_FEATURES) and view_2d.bonds.shape == (5, 2)
    assert view_3d.coordinates.shape == (5, 3) and view_3d.conformer_method == METHOD_ETKDG
    assert mol.GetNumAtoms() == 5 and mol.GetNumConformers() == 0  # input untouched


# --- conformer fallback chain ------------------------------------------------------------------


def test_fallback_to_random_coordinates(monkeypatch):
    real_embed = conformer._embed
    monkeypatch.setattr(
        conformer, "_embed", lambda mol, params: params.useRandomCoords and real_embed(mol, params)
    )
    views = compute_views(ASPIRIN)
    assert views.conformer_method == METHOD_ETKDG_RANDOM_COORDS
    assert np.linalg.svd(views.coordinates - views.coordinates.mean(0), compute_uv=False)[2] > 0.1


def test_fallback_to_2d_coordinates(monkeypatch):
    monkeypatch.setattr(conformer, "_embed", lambda mol, params: False)
    views = compute_views(IBUPROFEN, ViewConfig(mmff_relax=True))
    assert views.conformer_method == METHOD_2D_COORDS  # flat fallback is never relaxed
    assert (views.coordinates[:, 2] == 0).all() and np.ptp(views.coordinates[:, 0]) > 3


def test_embedding_failure_of_every_method(monkeypatch):
    monkeypatch.setattr(conformer, "_embed", lambda mol, params: False)

    def broken_depiction(mol):
        raise RuntimeError("depiction failed")

    monkeypatch.setattr(conformer, "_compute_2d", broken_depiction)
    with pytest.raises(ConformerError, match="depiction failed") as info:
        compute_views("CCO")
    assert info.value.code is ViewErrorCode.EMBEDDING_FAILED


def test_timed_out_first_attempt_skips_random_coordinates(monkeypatch):
    calls = []
    monkeypatch.setattr(
        conformer, "_embed", lambda mol, params: calls.append(params.useRandomCoords) and False
    )
    monkeypatch.setattr(conformer, "_timed_out", lambda start, timeout_s: True)
    assert compute_views("CCO").conformer_method == METHOD_2D_COORDS
    assert calls == [False]


def test_real_etkdg_failure_falls_back_to_2d():
    # Trans-fused bicyclo[1.1.0]butane: the requested stereo cannot exist in 3D, so both ETKDG
    # attempts fail; the row is kept with a flat, labelled geometry.
    views = compute_views("[C@H]12C[C@@H]1C2")
    assert views.conformer_method == METHOD_2D_COORDS
    assert (views.coordinates[:, 2] == 0).all()


def test_force_field_relaxation_label():
    plain = compute_views(IBUPROFEN)
    relaxed = compute_views(IBUPROFEN, ViewConfig(mmff_relax=True))
    assert relaxed.conformer_method == "etkdg+mmff"
    assert not np.allclose(relaxed.coordinates, plain.coordinates, atol=1e-3)
    np.testing.assert_array_equal(relaxed.atom_features, plain.atom_features)
    boronic = compute_views("OB(O)c1ccccc1", ViewConfig(mmff_relax=True))  # no MMFF94 boron type
    assert boronic.conformer_method == "etkdg+uff"


# --- batch API ---------------------------------------------------------------------------------


def test_batch_never_raises_and_keeps_order():
    inputs = [
        ASPIRIN,
        None,
        "C1CC",
        "",
        "C(C)(C)(C)(C)C",
        "N[Pt](N)(Cl)Cl",
        "C" * 300,
        42,
        "CC(=O)[O-].[Na+]",
        "[H][H]",
    ]
    results = compute_views_batch(inputs)
    assert [r.index for r in results] == list(range(len(inputs)))
    codes = [None if r.ok else r.error.code for r in results]
    assert codes == [
        None,
        ViewErrorCode.EMPTY_INPUT,
        ViewErrorCode.PARSE_ERROR,
        ViewErrorCode.EMPTY_INPUT,
        ViewErrorCode.SANITIZATION_ERROR,
        ViewErrorCode.UNSUPPORTED_ELEMENT,
        ViewErrorCode.TOO_MANY_ATOMS,
        ViewErrorCode.UNEXPECTED,  # an int is a caller bug, still reported per row
        None,
        ViewErrorCode.NO_HEAVY_ATOMS,
    ]
    assert all((r.views is None) == (r.error is not None) for r in results)
    assert results[0].views.equals(compute_views(ASPIRIN))
    assert results[8].views.canonical_smiles == "CC(=O)[O-]"
    assert "TypeError" in results[7].error.reason


def test_batch_wraps_unexpected_exceptions(monkeypatch):
    real_embed = conformer._embed

    def flaky(mol, params):
        if mol.GetNumHeavyAtoms() == 3:
            raise RuntimeError("boom")
        return real_embed(mol, params)

    monkeypatch.setattr(conformer, "_embed", flaky)
    results = compute_views_batch(["CCO", "CCCO", "CCC"])
    assert [r.ok for r in results] == [False, True, False]
    assert isinstance(results[0].error, UnexpectedViewError)
    assert results[0].error.reason == "RuntimeError: boom"
    assert isinstance(results[0].error.__cause__, RuntimeError)
    assert compute_views_batch([]) == []


@pytest.mark.parametrize(
    "smiles",
    [
        "CC(=O)Oc1ccccc1C(=O)O",
        "C[N+](C)(C)CC(=O)[O-]",  # zwitterion
        "c1ccc2[nH]ccc2c1",  # aromatic N-H
        "O=S(=O)(N)c1ccc(Cl)cc1",
        "C[C@H](N)C(=O)O",
        "FC(F)(F)c1ncc(Br)s1",
        "OP(=O)(O)OC[C@H]1O[C@@H](n2cnc3c(N)ncnc32)[C@H](O)[C@@H]1O",
    ],
)
def test_properties_with_given_hydrogens_equal_the_plain_call(smiles):
    # The views stage passes its AddHs copy so Crippen does not add hydrogens a second time.
    mol = Chem.MolFromSmiles(smiles)
    assert molecule_properties(mol, Chem.AddHs(mol)) == molecule_properties(mol)


def test_batch_properties_are_those_of_the_standardised_molecule():
    # Non-canonical aspirin, its sodium salt (the counter-ion is dropped first) and a bad row.
    inputs = ["OC(=O)c1ccccc1OC(C)=O", "CC(=O)Oc1ccccc1C(=O)[O-].[Na+]", "C1CC"]
    results = compute_views_batch(inputs, with_properties=True)
    assert [r.ok for r in results] == [True, True, False]
    aspirin = results[0].properties
    assert aspirin.mw == pytest.approx(180.159, abs=1e-3)
    assert (aspirin.hbd, aspirin.hba, aspirin.rotatable_bonds, aspirin.heavy_atoms) == (1, 3, 2, 13)
    assert aspirin.tpsa == pytest.approx(63.6, abs=1e-6)
    for result in results[:2]:  # equal to a fresh parse of the stored canonical SMILES
        assert result.properties == molecule_properties(Chem.MolFromSmiles(result.views.canonical_smiles))
    assert results[1].properties.mw < aspirin.mw  # carboxylate: one hydrogen fewer
    assert results[2].properties is None
    assert all(r.properties is None for r in compute_views_batch(inputs[:2]))  # not asked for


# --- Arrow -------------------------------------------------------------------------------------


def test_arrow_round_trip_is_exact(small_views, tmp_path):
    table = views_to_arrow(small_views)
    assert table.schema.equals(VIEW_SCHEMA, check_metadata=True)
    assert table.num_rows == len(small_views)
    assert table.column("num_atoms").to_pylist() == [v.num_atoms for v in small_views]
    assert len(table.column("atom_features")[0]) == small_views[0].num_atoms * NUM_ATOM_FEATURES

    def assert_same(restored, expected):
        assert len(restored) == len(expected)
        for got, want in zip(restored, expected, strict=True):
            assert got.equals(want)
            assert got.coordinates.dtype == np.float32 and got.bonds.dtype == np.int16

    assert_same(views_from_arrow(table), small_views)
    path = tmp_path / "views.parquet"
    pq.write_table(table, path)
    from_parquet = pq.read_table(path)
    assert from_parquet.schema.equals(VIEW_SCHEMA, check_metadata=False)
    assert_same(views_from_arrow(from_parquet), small_views)
    assert_same(views_from_arrow(table.slice(2, 3)), small_views[2:5])  # offsets of a slice
    assert_same(
        views_from_arrow(pa.concat_tables([table.slice(0, 1), table.slice(3)])),
        small_views[:1] + small_views[3:],
    )
    batch = table.to_batches()[0].slice(1, 2)
    assert_same(views_from_arrow(batch), small_views[1:3])
    restored = views_from_arrow(table)[0]
    restored.coordinates[0, 0] = 99.0  # arrays are writable copies, not views of Arrow memory
    assert small_views[0].coordinates[0, 0] != 99.0


def test_arrow_empty_and_invalid_tables(small_views):
    empty = views_to_arrow([])
    assert empty.num_rows == 0 and empty.schema.equals(VIEW_SCHEMA) and views_from_arrow(empty) == []
    table = views_to_arrow(small_views[:2])
    with pytest.raises(ValueError, match="missing column"):
        views_from_arrow(table.drop_columns(["coordinates"]))
    other_spec = table.replace_schema_metadata({b"mvclam.atom_feature_names": b"element,degree"})
    with pytest.raises(ValueError, match="atom features"):
        views_from_arrow(other_spec)
    wrong_sizes = table.set_column(2, "num_atoms", pa.array([5, 5], pa.int16()))
    with pytest.raises(ValueError, match="inconsistent"):
        views_from_arrow(wrong_sizes)


# --- collation ---------------------------------------------------------------------------------


def test_collate_pads_and_masks(small_views):
    batch = collate_views(small_views)
    sizes = [v.num_atoms for v in small_views]
    b, n = len(small_views), max(sizes)
    assert isinstance(batch, ViewBatch) and len(batch) == b
    assert batch.atom_features.shape == (b, n, NUM_ATOM_FEATURES) and batch.atom_features.dtype == torch.long
    assert batch.atom_mask.shape == (b, n) and batch.atom_mask.dtype == torch.bool
    assert batch.adjacency.shape == batch.topological_distance.shape == (b, n, n)
    assert batch.coordinates.shape == (b, n, 3)
    assert all(
        t.dtype == torch.float32 for t in (batch.adjacency, batch.topological_distance, batch.coordinates)
    )
    assert batch.num_atoms.tolist() == sizes
    assert batch.element_indices.shape == (b, n)

    for row, views in enumerate(small_views):
        k = views.num_atoms
        assert batch.atom_mask[row, :k].all() and not batch.atom_mask[row, k:].any()
        np.testing.assert_array_equal(batch.atom_features[row, :k].numpy(), views.atom_features)
        np.testing.assert_array_equal(batch.adjacency[row, :k, :k].numpy(), views.adjacency())
        np.testing.assert_array_equal(
            batch.topological_distance[row, :k, :k].numpy(), views.topological_distance
        )
        np.testing.assert_array_equal(batch.coordinates[row, :k].numpy(), views.coordinates)
        # padding is zero everywhere
        assert not batch.atom_features[row, k:].any() and not batch.coordinates[row, k:].any()
        assert not batch.adjacency[row, k:].any() and not batch.adjacency[row, :, k:].any()
        assert (
            not batch.topological_distance[row, k:].any() and not batch.topological_distance[row, :, k:].any()
        )
    assert torch.equal(batch.adjacency, batch.adjacency.transpose(1, 2))
    assert torch.equal(batch.element_indices, batch.atom_features[..., 0])


def test_collate_fixed_size_device_and_empty(small_views):
    batch = collate_views(small_views[:2], pad_to=40)
    assert batch.atom_features.shape == (2, 40, NUM_ATOM_FEATURES)
    assert batch.atom_mask.sum().item() == small_views[0].num_atoms + small_views[1].num_atoms
    moved = batch.to("cpu")
    assert isinstance(moved, ViewBatch) and torch.equal(moved.coordinates, batch.coordinates)
    with pytest.raises(ValueError, match="pad_to"):
        collate_views(small_views, pad_to=3)
    empty = collate_views([], pad_to=8)
    assert empty.atom_features.shape == (0, 8, NUM_ATOM_FEATURES) and len(empty) == 0


def test_atom_environments_are_ecfp_like_and_batch_independent(small_views):
    ethanol, propanol = compute_views("CCO"), compute_views("CCCO")
    batch = collate_views([ethanol, propanol, *small_views])
    env = batch.atom_environments
    assert env.shape == (*batch.atom_mask.shape, ENVIRONMENT_RADIUS + 1) and env.dtype == torch.long
    assert (env[batch.atom_mask] >= 0).all() and not env[~batch.atom_mask].any()

    carbon = int(compute_views("C").atom_features[0, 0])

    def methyl(views) -> int:  # the carbon with one heavy neighbour
        degrees = views.adjacency().sum(axis=1)
        return next(
            i for i in range(views.num_atoms) if views.atom_features[i, 0] == carbon and degrees[i] == 1
        )

    # The methyl carbons of ethanol and propanol: same atom and same neighbours (radius 0 and 1),
    # different second shell (an O in ethanol, a C in propanol) at radius 2.
    ethanol_methyl, propanol_methyl = env[0, methyl(ethanol)], env[1, methyl(propanol)]
    assert ethanol_methyl[0] == propanol_methyl[0] and ethanol_methyl[1] == propanol_methyl[1]
    assert ethanol_methyl[2] != propanol_methyl[2]
    # Symmetric atoms share every identifier: the two ortho carbons of phenol.
    phenol = compute_views("Oc1ccccc1")
    ids = collate_views([phenol]).atom_environments[0]
    _, counts = torch.unique(ids[:, 2], return_counts=True)
    assert sorted(counts.tolist()) == [1, 1, 1, 2, 2]  # O, ipso C, para C, 2 ortho, 2 meta
    # Identifiers do not depend on the other molecules of the batch or on padding.
    alone = collate_views([propanol], pad_to=10).atom_environments[0, :4]
    assert torch.equal(alone, env[1, :4])


def test_views_package_does_not_import_torch():
    code_ = "import sys, mvclam.engine.views as v; v.compute_views('CCO'); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code_], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
