"""Catalog search: text → molecules by MaxSim, molecule → molecules/texts, index management."""

from .index import BRUTE_FORCE_ROWS, IndexReport, build_index, token_index
from .searcher import CatalogSearcher, SearchError, SearchHit, token_set_similarity

__all__ = [
    "BRUTE_FORCE_ROWS",
    "CatalogSearcher",
    "IndexReport",
    "SearchError",
    "SearchHit",
    "build_index",
    "token_index",
    "token_set_similarity",
]
