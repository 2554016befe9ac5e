"""The repetition guard applied to every generated caption, whatever the backend.

A small LLM that loses track loops ("... is a conjugate acid of a conjugate acid of a ..."). The
guard cuts a caption before the first word n-gram that would occur more than `max_repeats` times,
then back to the last sentence end before the cut when there is one, so the caption stays readable
and no n-gram repeats more than `max_repeats` times. It works on the decoded text (words split on
white space), which is what a reader and the BLEU/METEOR scorers see, and identically for the
transformers and vLLM backends; the LLM still stops at its end-of-turn token as before.
"""

from __future__ import annotations

from collections import Counter

SENTENCE_ENDS = (".", "!", "?")


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
