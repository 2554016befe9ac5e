"""The one fixed train/validation/test split of every pair molecule, by InChIKey.

Rule (version 1, never change it silently: every reported number depends on it):

    bucket = int(sha256(f"mvclam-split-v1:{inchikey}").hexdigest()[:8], 16) % 100
    test if bucket < 10, validation if bucket < 20, else train        (10 % / 10 % / 80 %)

The InChIKey is that of the *standardised* molecule (largest organic fragment, see
engine/views/standardize.py), so a salt and its parent, or a molecule written with different SMILES
in two source files, always land in the same split. The rule needs no split file and extends to any
new molecule (an independent test set, weak labels) without coordination.
"""

from __future__ import annotations

import hashlib
from typing import Literal

Split = Literal["train", "validation", "test"]
SPLITS: tuple[Split, ...] = ("train", "validation", "test")
SPLIT_SALT = "mvclam-split-v1"
TEST_BUCKETS = 10  # buckets [0, 10) -> test
VALIDATION_BUCKETS = 10  # buckets [10, 20) -> validation


def split_bucket(inchikey: str) -> int:
    """Bucket in [0, 100) of an InChIKey (uniform, stable across Python versions and machines)."""
    if not inchikey:
        raise ValueError("empty InChIKey")
    digest = hashlib.sha256(f"{SPLIT_SALT}:{inchikey}".encode()).hexdigest()
    return int(digest[:8], 16) % 100


def split_of(inchikey: str) -> Split:
    bucket = split_bucket(inchikey)
    if bucket < TEST_BUCKETS:
        return "test"
    if bucket < TEST_BUCKETS + VALIDATION_BUCKETS:
        return "validation"
    return "train"


def split_rule() -> dict[str, object]:
    """The rule as data, stored in manifests and evaluation reports."""
    return {
        "salt": SPLIT_SALT,
        "key": "InChIKey of the standardised molecule",
        "bucket": "int(sha256(f'{salt}:{inchikey}').hexdigest()[:8], 16) % 100",
        "test": f"bucket < {TEST_BUCKETS}",
        "validation": f"{TEST_BUCKETS} <= bucket < {TEST_BUCKETS + VALIDATION_BUCKETS}",
        "train": f"bucket >= {TEST_BUCKETS + VALIDATION_BUCKETS}",
    }
