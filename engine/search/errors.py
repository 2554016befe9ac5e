"""The one error type of catalog search (no imports: every search module may raise it)."""

from __future__ import annotations


class SearchError(ValueError):
    """A search that cannot be answered as asked (bad filter, SMARTS, SMILES or model mismatch)."""
