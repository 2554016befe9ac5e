"""Offline WordNet for nltk's METEOR (no nltk.download, no network).

nltk's `meteor_score` matches synonyms through WordNet 3.0. Lookup order for a WordNet database
directory in the Princeton WNDB format (data.noun, index.noun, ...):

1. $MVCLAM_WORDNET_DIR,
2. nltk's own `corpora/wordnet` when an nltk_data directory holds it,
3. /usr/share/wordnet from Debian's `wordnet-base` package (WordNet 3.0, the version nltk ships:
   `apt-get install wordnet-base`).

Debian's copy lacks the `lexnames` file that nltk's reader opens (the fixed list of the 45
lexicographer files, documented in lexnames(5WN)); the database is then copied once (~28 MB) into
the user cache with that file added (nltk refuses symlinks leaving a corpus root), and the
directory is authorised in `nltk.data.path` (nltk >= 3.9 refuses corpus paths outside it).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from functools import cache
from pathlib import Path

DEBIAN_WORDNET = Path("/usr/share/wordnet")
_REQUIRED = ("data.noun", "index.noun", "data.verb", "index.verb", "data.adj", "index.adj", "noun.exc")
_LEXNAMES = (
    ("adj.all", 3), ("adj.pert", 3), ("adv.all", 4), ("noun.Tops", 1), ("noun.act", 1),
    ("noun.animal", 1), ("noun.artifact", 1), ("noun.attribute", 1), ("noun.body", 1),
    ("noun.cognition", 1), ("noun.communication", 1), ("noun.event", 1), ("noun.feeling", 1),
    ("noun.food", 1), ("noun.group", 1), ("noun.location", 1), ("noun.motive", 1),
    ("noun.object", 1), ("noun.person", 1), ("noun.phenomenon", 1), ("noun.plant", 1),
    ("noun.possession", 1), ("noun.process", 1), ("noun.quantity", 1), ("noun.relation", 1),
    ("noun.shape", 1), ("noun.state", 1), ("noun.substance", 1), ("noun.time", 1),
    ("verb.body", 2), ("verb.change", 2), ("verb.cognition", 2), ("verb.communication", 2),
    ("verb.competition", 2), ("verb.consumption", 2), ("verb.contact", 2), ("verb.creation", 2),
    ("verb.emotion", 2), ("verb.motion", 2), ("verb.perception", 2), ("verb.possession", 2),
    ("verb.social", 2), ("verb.stative", 2), ("verb.weather", 2), ("adj.ppl", 3),
)  # fmt: skip


class WordNetUnavailable(RuntimeError):
    pass


def _is_wndb(directory: Path) -> bool:
    return all((directory / name).is_file() for name in _REQUIRED)


def find_wordnet_dir() -> Path:
    """A WNDB directory, or WordNetUnavailable saying what was tried."""
    tried = []
    env = os.environ.get("MVCLAM_WORDNET_DIR")
    if env:
        if _is_wndb(Path(env)):
            return Path(env)
        tried.append(f"$MVCLAM_WORDNET_DIR={env} (not a WordNet database)")
    try:
        import nltk

        found = Path(str(nltk.data.find("corpora/wordnet")))
        if _is_wndb(found):
            return found
    except (LookupError, ImportError, OSError):
        tried.append("nltk_data corpora/wordnet (not installed)")
    if _is_wndb(DEBIAN_WORDNET):
        return DEBIAN_WORDNET
    tried.append(f"{DEBIAN_WORDNET} (install Debian's wordnet-base)")
    raise WordNetUnavailable("no offline WordNet database: tried " + "; ".join(tried))


def _copy_with_lexnames(source: Path) -> Path:
    """Copy of `source`'s files plus a generated lexnames file (made once, reused)."""
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mvclam" / "wordnet"
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError:
        base = Path(tempfile.mkdtemp(prefix="mvclam-wordnet-"))
    for item in source.iterdir():
        copy = base / item.name
        if item.is_file() and (
            copy.is_symlink() or not copy.exists() or copy.stat().st_size != item.stat().st_size
        ):
            copy.unlink(missing_ok=True)
            shutil.copyfile(item, copy)
    lexnames = base / "lexnames"
    if not lexnames.exists():
        lines = [f"{i:02d}\t{name}\t{category}" for i, (name, category) in enumerate(_LEXNAMES)]
        lexnames.write_text("\n".join(lines) + "\n")
    return base


def _offline_reader_class(base: type) -> type:
    class OfflineWordNetReader(base):
        def map_wn(self, version: str = "wordnet"):
            # Maps synsets to WordNet 3.0 ids for the multilingual OMW data, by loading nltk's own
            # "wordnet" corpus (absent here). METEOR needs only English synsets and lemmas.
            return None

    return OfflineWordNetReader


@cache
def load_wordnet():
    """nltk WordNetCorpusReader over an offline database; WordNetUnavailable if none is found."""
    try:
        import nltk
        from nltk.corpus.reader.wordnet import WordNetCorpusReader
    except ImportError as exc:
        raise WordNetUnavailable(f"nltk is not installed: {exc}") from None
    directory = find_wordnet_dir()
    if not (directory / "lexnames").is_file():
        directory = _copy_with_lexnames(directory)
    for allowed in (str(directory), str(directory.resolve())):
        if allowed not in nltk.data.path:
            nltk.data.path.append(allowed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The multilingual functions")  # no OMW: not needed
        reader = _offline_reader_class(WordNetCorpusReader)(str(directory), None)
    reader.synsets("molecule")  # fail here, not in the middle of scoring
    return reader


def wordnet_status() -> tuple[bool, str]:
    """(available, description) for reports."""
    try:
        reader = load_wordnet()
    except WordNetUnavailable as exc:
        return False, str(exc)
    except Exception as exc:  # a broken database must not crash an evaluation
        return False, f"{type(exc).__name__}: {exc}"
    return True, f"WordNet {reader.get_version()} from {reader.root}"
