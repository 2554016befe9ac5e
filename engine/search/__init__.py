"""Catalog search: text → molecules by MaxSim, molecule → molecules/texts, index management."""

from .errors import SearchError
from .index import BRUTE_FORCE_ROWS, IndexReport, build_index, token_index
from .scoring import token_set_similarity
from .searcher import CatalogSearcher, SearchHit

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
