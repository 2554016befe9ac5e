"""The guards applied to every generated caption, whatever the backend.

A small LLM that loses track loops, between words ("... is a conjugate acid of a conjugate acid of
a ...") or inside one chemical name ("1,3-dihydroxy-1,3-dihydroxy-1,3-dihydroxy-...", "1,2,3,4,5,
6,7,8,9,10,11,12,13,..."). Each guard cuts the caption before the loop, then back to the last
sentence end before the cut when there is one, so the caption stays readable:

- `trim_repetition`: no word n-gram occurs more than `max_repeats` times;
- `trim_name_loops`: no run of 5+ characters three times in a row, no list of 12+ locants. Real
  names repeat too (oligosaccharides, peptides): 25 of the 13,989 training descriptions have such a
  run, against 106 of 1,457 test captions of the first retrieval-augmented captioner;
- `trim_unfinished`: a caption cut by the token limit ends at its last full sentence.

They work on the decoded text, which is what a reader and the BLEU/METEOR scorers see, and
identically for the transformers and vLLM backends; the LLM still stops at its end-of-turn token.
"""

from __future__ import annotations

import re
from collections import Counter

SENTENCE_ENDS = (".", "!", "?")
_REPEATED_RUN = re.compile(r"(.{5,}?)\1\1")  # a run of 5+ characters, three times in a row
_LOCANT_LIST = re.compile(r"(?:\d+[a-z]?'*,){12,}")  # "1,2,3,...": twelve or more locants


def _cut(text: str, end: int) -> str:
    """`text[:end]`, then back to its last sentence end when it has one (else without a dangling
    hyphen or comma)."""
    kept = text[:end].rstrip(" \t\n,;:-([")
    last = max(kept.rfind(mark) for mark in SENTENCE_ENDS)
    return kept[: last + 1] if last > 0 else kept


def max_ngram_count(text: str, n: int = 4) -> int:
    """How often the most frequent word n-gram of `text` occurs (0 for fewer than n words)."""
    words = text.split()
    counts = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    return max(counts.values(), default=0)


def trim_repetition(text: str, n: int = 4, max_repeats: int = 2) -> str:
    """`text` cut so that no word n-gram occurs more than `max_repeats` times (see the module)."""
    if n < 1 or max_repeats < 1:
        raise ValueError("n and max_repeats must be positive")
    words = text.split()
    counts: Counter[tuple[str, ...]] = Counter()
    for start in range(len(words) - n + 1):
        gram = tuple(words[start : start + n])
        counts[gram] += 1
        if counts[gram] > max_repeats:
            # keep the words before this occurrence's last word: the n-gram is then incomplete
            kept = words[: start + n - 1]
            for end in range(len(kept), 0, -1):
                if kept[end - 1].endswith(SENTENCE_ENDS):
                    return " ".join(kept[:end])
            return " ".join(kept)
    return text


def trim_name_loops(text: str) -> str:
    """`text` cut before the first loop inside a word (see the module): the second repeat of a run of
    5+ characters repeated three times in a row, or a list of twelve or more locants."""
    cuts = []
    if match := _REPEATED_RUN.search(text):
        cuts.append(match.start() + 2 * len(match.group(1)))
    if match := _LOCANT_LIST.search(text):
        cuts.append(match.start())
    return _cut(text, min(cuts)) if cuts else text


def trim_unfinished(text: str) -> str:
    """A caption the token limit stopped mid-sentence, back to its last sentence end (if any)."""
    return text if text.rstrip().endswith(SENTENCE_ENDS) else _cut(text, len(text))
