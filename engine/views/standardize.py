"""Molecule standardisation before views are computed.

Deliberately minimal, because catalog SMILES and caption corpora (ChEBI-20, PubChem) describe the
molecule *as written*; every step that changes chemistry is one a description can contradict:

1. Input: SMILES strings are stripped of surrounding whitespace and parsed as given (ChEBI's doubled
   backslashes `\\\\` are accepted by RDKit as written). What remains must be printable ASCII
   without whitespace, optionally followed by one CXSMILES block (` |...|`): RDKit parses the
   valid prefix of "CCO<garbage>" and ignores the rest as a name, so "CCOü" or "CCO junk" would
   silently become ethanol; such input is a SmilesParseError instead. None, NaN, "" and blank lines raise
   EmptyInputError. Failures are classified: SMILES that do not parse even unsanitised are
   SmilesParseError; parseable SMILES that fail valence/aromaticity checks are SanitizationError.
   RDKit's own log output is silenced and its message is kept in the error's reason.
   RDKit Mol inputs are copied (never modified), re-sanitised and stripped of explicit hydrogens.
2. Fragments: the largest organic fragment is kept (LargestFragmentChooser, preferOrganic=True), so
   salts, solvents and metal counter-ions are dropped ("CC(=O)[O-].[Na+]" -> acetate). Without any
   carbon-containing fragment the input is kept whole: stripping "N.N.Cl[Pt]Cl" (cisplatin) down
   to ammonia would silently describe another compound; instead step 4 rejects the Pt.
3. Charges are kept as written (zwitterions, conjugate acids/bases) unless `neutralize=True`.
4. Checks, in this order: allowed elements (covalently bound metals and R-group dummies "*" remain
   after step 2 and are rejected), at least one heavy atom, at most `max_atoms` atoms in the view
   (never cropped).

No tautomer canonicalisation or functional-group normalisation: those are expensive, and they
would merge molecules that captions distinguish.
"""

from __future__ import annotations

import math
import re
from functools import cache

from rdkit import Chem, rdBase
from rdkit.Chem.MolStandardize import rdMolStandardize

from .config import ViewConfig
from .errors import (
    EmptyInputError,
    InchiKeyError,
    NoHeavyAtomsError,
    SanitizationError,
    SmilesParseError,
    TooManyAtomsError,
    UnsupportedElementError,
    clean_rdkit_log,
    shorten,
)

MolInput = str | Chem.Mol | None

_PARSE_PREFIX = re.compile(r"^SMILES Parse Error:\s*")
# A SMILES is printable ASCII without whitespace; a CXSMILES extension block (stereo groups,
# labels) may follow after blanks, as the .smi reader keeps it (engine/io/catalog.py).
_SMILES_TEXT = re.compile(r"[!-~]+(?:[ \t]+\|[ -{}~]*\|)?")
_SMILES_CHAR = re.compile(r"[!-~]")
_PARSE_SUFFIX = re.compile(r"\s*(?:for input|while parsing):.*$")


@cache
def _fragment_chooser() -> rdMolStandardize.LargestFragmentChooser:
    return rdMolStandardize.LargestFragmentChooser(preferOrganic=True)


@cache
def _uncharger() -> rdMolStandardize.Uncharger:
    return rdMolStandardize.Uncharger()


def _log_lines(log: rdBase.CaptureErrorLog) -> list[str]:
    """The captured RDKit log as lines; [] when it cannot be decoded (RDKit cuts the input it
    echoes at a byte count, which may split a UTF-8 character)."""
    try:
        return clean_rdkit_log(log.messages)
    except UnicodeDecodeError:
        return []


def _check_smiles_text(smiles: str) -> None:
    """SmilesParseError for text that cannot be a SMILES: a non-ASCII, control or whitespace
    character (outside a trailing CXSMILES block) that RDKit would take for the end of it."""
    if _SMILES_TEXT.fullmatch(smiles):
        return
    extension = re.search(r"[ \t]+\|[ -{}~]*\|$", smiles)
    body = smiles[: extension.start()] if extension else smiles
    position = next((i for i, c in enumerate(body) if not _SMILES_CHAR.fullmatch(c)), len(body))
    character = smiles[position] if position < len(smiles) else ""
    what = f"U+{ord(character):04X}" if character else "text"
    raise SmilesParseError(
        f"could not parse SMILES {shorten(smiles)!r}: a non-ASCII, control or whitespace character "
        f"({what}) at position {position + 1}; a SMILES is printable ASCII"
    )


def _explain_parse_failure(smiles: str) -> Exception:
    """Slow path, failures only: parse again unsanitised to tell syntax from chemistry errors."""
    with rdBase.CaptureErrorLog() as log:
        raw = Chem.MolFromSmiles(smiles, sanitize=False)
    shown = shorten(smiles)
    if raw is None:
        lines = _log_lines(log)
        detail = _PARSE_SUFFIX.sub("", _PARSE_PREFIX.sub("", lines[0])) if lines else "syntax error"
        return SmilesParseError(f"could not parse SMILES {shown!r}: {detail}")
    with rdBase.CaptureErrorLog() as log:
        try:
            Chem.SanitizeMol(raw)
        except Exception as exc:  # RDKit raises several MolSanitizeException subclasses
            return SanitizationError(f"SMILES {shown!r} failed sanitization: {exc}")
    lines = _log_lines(log)
    detail = lines[0] if lines else "unknown RDKit error"
    return SanitizationError(f"SMILES {shown!r} failed sanitization: {detail}")


def _from_smiles(smiles: str) -> Chem.Mol:
    smiles = smiles.strip()
    if not smiles:
        raise EmptyInputError("empty SMILES")
    _check_smiles_text(smiles)
    # One sanitising parse on the (common) success path: RDKit's own stereo perception included.
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise _explain_parse_failure(smiles)
    return mol


def _from_mol(mol: Chem.Mol) -> Chem.Mol:
    if mol.GetNumAtoms() == 0:
        raise EmptyInputError("molecule has no atoms")
    mol = Chem.Mol(mol)  # never modify the caller's object
    with rdBase.CaptureErrorLog():
        try:
            Chem.SanitizeMol(mol)
        except Exception as exc:  # RDKit raises several MolSanitizeException subclasses
            raise SanitizationError(f"molecule failed sanitization: {exc}") from None
    mol = Chem.RemoveHs(mol)
    Chem.AssignStereochemistry(mol, cleanIt=True, force=True)
    return mol


def to_mol(mol_or_smiles: MolInput) -> Chem.Mol:
    """Parses/copies the input into a sanitised RDKit Mol (no fragment or element handling)."""
    if mol_or_smiles is None or (isinstance(mol_or_smiles, float) and math.isnan(mol_or_smiles)):
        raise EmptyInputError("no molecule (None/NaN)")  # NaN: missing value in a pandas column
    if isinstance(mol_or_smiles, str):
        return _from_smiles(mol_or_smiles)
    if isinstance(mol_or_smiles, Chem.Mol):
        return _from_mol(mol_or_smiles)
    raise TypeError(f"expected a SMILES string or an RDKit Mol, got {type(mol_or_smiles).__name__}")


def _has_carbon(mol: Chem.Mol) -> bool:
    return any(atom.GetAtomicNum() == 6 for atom in map(mol.GetAtomWithIdx, range(mol.GetNumAtoms())))


def check_molecule(mol: Chem.Mol, config: ViewConfig) -> None:
    """Element, heavy-atom and size checks of step 4; raises the matching ViewError."""
    allowed = config.allowed_atomic_numbers
    atoms = list(map(mol.GetAtomWithIdx, range(mol.GetNumAtoms())))  # faster than mol.GetAtoms()
    bad = [a.GetSymbol() for a in atoms if a.GetAtomicNum() not in allowed]
    if bad:
        raise UnsupportedElementError(f"unsupported element(s): {', '.join(dict.fromkeys(bad))}")
    if mol.GetNumHeavyAtoms() == 0:
        raise NoHeavyAtomsError("molecule has no heavy atoms")
    n_atoms = mol.GetNumAtoms()
    what = "heavy atoms"
    if config.include_hydrogens:
        n_atoms += sum(a.GetTotalNumHs() for a in atoms)
        what = "atoms including hydrogens"
    if n_atoms > config.max_atoms:
        raise TooManyAtomsError(f"molecule has {n_atoms} {what}; max_atoms is {config.max_atoms}")


def standardize_tracked(mol_or_smiles: MolInput, config: ViewConfig) -> tuple[Chem.Mol, str | None]:
    """`standardize`, also returning the input SMILES when the result is its unmodified parse
    (else None). Lets compute_views skip re-parsing inputs that already are canonical SMILES."""
    with rdBase.BlockLogs():
        mol = to_mol(mol_or_smiles)
        source = mol_or_smiles.strip() if isinstance(mol_or_smiles, str) else None
        if len(Chem.GetMolFrags(mol)) > 1 and _has_carbon(mol):
            mol, source = _fragment_chooser().choose(mol), None
        if config.neutralize:
            mol, source = _uncharger().uncharge(mol), None
            Chem.AssignStereochemistry(mol, cleanIt=True, force=True)
        check_molecule(mol, config)
    return mol, source


def standardize(mol_or_smiles: MolInput, config: ViewConfig | None = None) -> Chem.Mol:
    """Input -> sanitised, single-fragment, checked heavy-atom Mol (see module docstring).

    Raises a ViewError subclass for every molecule-level problem; TypeError for a wrong input type.
    """
    return standardize_tracked(mol_or_smiles, config or ViewConfig())[0]


def canonical_smiles(mol: Chem.Mol) -> str:
    """RDKit canonical isomeric SMILES (stereo and isotopes kept)."""
    return Chem.MolToSmiles(mol, isomericSmiles=True, canonical=True)


def inchikey(mol: Chem.Mol) -> str:
    """Standard InChIKey; raises InchiKeyError when InChI cannot represent the molecule.

    Note that standard InChI normalises mobile hydrogens and zwitterions, so e.g. glycine and its
    zwitterion share a key while their canonical SMILES differ.
    """
    with rdBase.BlockLogs():
        try:
            key = Chem.MolToInchiKey(mol)
        except Exception as exc:  # defensive: RDKit returns "" on most failures
            raise InchiKeyError(f"InChI generation failed: {exc}") from None
    if not key:
        raise InchiKeyError(f"InChI generation failed for {shorten(canonical_smiles(mol))!r}")
    return key
