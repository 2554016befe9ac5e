"""Typed errors for molecule views.

Every molecule-level failure is a `ViewError` carrying a machine-readable `code` (stable strings,
safe to store next to a catalog row) and a human-readable `reason`. Errors pickle cleanly so they
can cross process boundaries in multiprocessing workers.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import ClassVar


class ViewErrorCode(StrEnum):
    EMPTY_INPUT = "empty_input"
    PARSE_ERROR = "parse_error"
    SANITIZATION_ERROR = "sanitization_error"
    UNSUPPORTED_ELEMENT = "unsupported_element"
    TOO_MANY_ATOMS = "too_many_atoms"
    NO_HEAVY_ATOMS = "no_heavy_atoms"
    INCHI_FAILED = "inchi_failed"
    EMBEDDING_FAILED = "embedding_failed"
    UNEXPECTED = "unexpected"


class ViewError(Exception):
    """A molecule for which views cannot be computed. `code` is a `ViewErrorCode`, `reason` prose."""

    default_code: ClassVar[ViewErrorCode | None] = None

    def __init__(self, reason: str, code: ViewErrorCode | str | None = None) -> None:
        resolved = ViewErrorCode(code) if code is not None else self.default_code
        if resolved is None:
            raise TypeError("ViewError needs a code (or use one of its subclasses)")
        # Both values go into args so that pickling (multiprocessing) rebuilds the same error.
        super().__init__(reason, resolved)
        self.reason = reason
        self.code = resolved

    def __str__(self) -> str:
        return f"{self.code.value}: {self.reason}"


class EmptyInputError(ViewError):
    default_code = ViewErrorCode.EMPTY_INPUT


class SmilesParseError(ViewError):
    default_code = ViewErrorCode.PARSE_ERROR


class SanitizationError(ViewError):
    default_code = ViewErrorCode.SANITIZATION_ERROR


class UnsupportedElementError(ViewError):
    default_code = ViewErrorCode.UNSUPPORTED_ELEMENT


class TooManyAtomsError(ViewError):
    default_code = ViewErrorCode.TOO_MANY_ATOMS


class NoHeavyAtomsError(ViewError):
    default_code = ViewErrorCode.NO_HEAVY_ATOMS


class InchiKeyError(ViewError):
    default_code = ViewErrorCode.INCHI_FAILED


class ConformerError(ViewError):
    default_code = ViewErrorCode.EMBEDDING_FAILED


class UnexpectedViewError(ViewError):
    """Wraps a non-ViewError exception raised while processing one row of a batch."""

    default_code = ViewErrorCode.UNEXPECTED


_LOG_STAMP = re.compile(r"^\[\d{2}:\d{2}:\d{2}\]\s*", re.MULTILINE)


def clean_rdkit_log(messages: str) -> list[str]:
    """RDKit log text -> non-empty lines without the "[hh:mm:ss]" stamps."""
    return [line.strip() for line in _LOG_STAMP.sub("", messages).splitlines() if line.strip()]


def shorten(text: str, limit: int = 80) -> str:
    """Keeps reasons readable when a catalog row holds a 2,000-character SMILES."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
