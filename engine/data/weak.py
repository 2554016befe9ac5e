"""L+M-24 weak labels (`smiles<TAB>{python set of property labels}`) templated into captions.

Each label set becomes one caption-like paragraph for a pre-training stage (the role PubChem324k's
pre-training split plays in the paper). Labels are grouped by their place in the L+M-24 label
hierarchy (`prop_counts.json` next to the labels file) and each group gets its own sentence:

    agent        "The molecule is a kinase inhibitor and an anti inflammatory."   (roles, drugs, toxins, pesticides)
    treatment    "It is used as a glaucoma treatment."
    health       "It is associated with hypertension and aging."                 (diseases, cancers, health effects)
    process      "It is involved in apoptosis."                                  (biological / industrial roles)
    organoleptic "Its odor or taste is described as green and balsamic."
    device       "It is used in organic light-emitting devices."                 (light and electricity)

Two wordings exist per group; the wording, the order of groups' labels and the subset kept when a
group has more than MAX_LABELS_PER_SENTENCE labels are drawn from `random.Random(f"{seed}:{smiles}")`,
so the caption of a molecule depends only on (seed, smiles, labels), never on file order or on
Python's set iteration order. Meta labels ("Odor_evaluation", ...) carry no property and are dropped.
Labels missing from the hierarchy are "agent" labels.
"""

from __future__ import annotations

import ast
import gzip
import json
import random
from collections.abc import Iterable, Mapping
from pathlib import Path

import pyarrow as pa

MAX_LABELS_PER_SENTENCE = 6
DEFAULT_MAX_PER_LABEL_SET = 50
GROUP_ORDER = ("agent", "treatment", "health", "process", "organoleptic", "device")
TEMPLATES: dict[str, tuple[str, str]] = {
    "agent": ("The molecule is {articled}.", "The molecule has a role as {articled}."),
    "treatment": ("It is used as {articled}.", "It has been studied as {articled}."),
    "health": ("It is associated with {plain}.", "It has been linked to {plain}."),
    "process": ("It is involved in {plain}.", "It plays a role in {plain}."),
    "organoleptic": ("Its odor or taste is described as {plain}.", "It has {plain} organoleptic notes."),
    "device": ("It is used in {plain} applications.", "It has applications in {plain}."),
}
# (top-level category, sub-category) -> group; sub-category None = any.
_HIERARCHY_GROUPS: dict[tuple[str, str | None], str | None] = {
    ("Biomedical", "treatments"): "treatment",
    ("Biomedical", "disease"): "health",
    ("Biomedical", "cancer"): "health",
    ("Biomedical", "health_effect_relation"): "health",
    ("Biomedical", None): "agent",
    ("Agriculture and Industry", "role_relation"): "process",
    ("Agriculture and Industry", "icides"): "agent",
    ("Human Interaction and Organoleptics", "toxin"): "agent",
    ("Human Interaction and Organoleptics", "organoleptic_effect_relations"): "organoleptic",
    ("Light and electricity", None): "device",
}
WEAK_SCHEMA = pa.schema(
    [
        pa.field("line", pa.int32(), nullable=False),
        pa.field("smiles", pa.string()),
        pa.field("labels", pa.list_(pa.string())),
        pa.field("description", pa.string()),
        pa.field("error", pa.string()),
    ]
)


def load_label_groups(path: str | Path) -> dict[str, str | None]:
    """label -> group (None = meta label to drop) from L+M-24's prop_counts.json / nested_props.json."""
    tree = json.loads(Path(path).read_text())
    groups: dict[str, str | None] = {}

    def visit(node: object, top: str, sub: str | None) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                if isinstance(value, Mapping | list):
                    visit(value, top, key if sub is None else sub)
                else:
                    groups[key] = _group_for(top, sub, key)
        elif isinstance(node, list):
            for item in node:
                if isinstance(item, str):
                    groups[item] = _group_for(top, sub, item)
                else:
                    visit(item, top, sub)

    for top, node in tree.items():
        visit(node, top, None)
    return groups


def _group_for(top: str, sub: str | None, label: str) -> str | None:
    if label.endswith("_evaluation"):
        return None
    if (top, sub) in _HIERARCHY_GROUPS:
        return _HIERARCHY_GROUPS[(top, sub)]
    return _HIERARCHY_GROUPS.get((top, None), "agent")


def parse_label_set(text: str) -> list[str]:
    """Sorted labels of a Python set/list literal; ValueError for anything else (literal_eval only
    evaluates literals, so a malicious line cannot run code)."""
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
        raise ValueError(f"not a Python literal: {exc}") from None
    if not isinstance(value, set | frozenset | list | tuple) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"expected a set of strings, got {type(value).__name__}")
    labels = sorted({v.strip() for v in value if v.strip()})
    if not labels:
        raise ValueError("empty label set")
    return labels


def _display(label: str) -> str:
    """'Hypertension' -> 'hypertension', but 'EC 3.1.1.7 inhibitor' and 'DNA-binder' stay as written."""
    first = label.split()[0]
    if len(first) > 1 and first[0].isupper() and first[1:].islower():
        return label[0].lower() + label[1:]
    return label


def _article(phrase: str) -> str:
    return ("an " if phrase[0].lower() in "aeiou" else "a ") + phrase


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def caption_from_labels(
    labels: Iterable[str], smiles: str, seed: int = 0, label_groups: Mapping[str, str | None] | None = None
) -> str | None:
    """Templated caption of one label set (see module docstring); None when only meta labels remain."""
    rng = random.Random(f"{seed}:{smiles}")
    by_group: dict[str, list[str]] = {}
    for label in sorted(set(labels)):
        group = (label_groups or {}).get(label, "agent")
        if group is not None:
            by_group.setdefault(group, []).append(_display(label))
    sentences = []
    for group in GROUP_ORDER:
        items = by_group.get(group)
        if not items:
            continue
        rng.shuffle(items)
        items = items[:MAX_LABELS_PER_SENTENCE]
        template = TEMPLATES[group][rng.randrange(len(TEMPLATES[group]))]
        sentences.append(template.format(articled=_join([_article(i) for i in items]), plain=_join(items)))
    return " ".join(sentences) if sentences else None


def read_weak_labels(
    path: str | Path,
    limit: int | None = None,
    seed: int = 0,
    label_groups: Mapping[str, str | None] | None = None,
    max_per_label_set: int | None = DEFAULT_MAX_PER_LABEL_SET,
) -> pa.Table:
    """WEAK_SCHEMA table (line, smiles, labels, description, error) of the labels file, in file order.

    Lines are visited in a random order drawn with `seed` (the file's first lines are not a random
    sample) and kept until `limit`, at most `max_per_label_set` per distinct label set: the label
    sets are very skewed (one set of cardiolipin labels covers 37 % of the file), and identical
    captions for thousands of molecules would be false negatives for a contrastive loss.
    Malformed lines get an `error`. `label_groups` defaults to prop_counts.json next to `path`.
    """
    path = Path(path)
    if label_groups is None:
        hierarchy = path.parent / "prop_counts.json"
        label_groups = load_label_groups(hierarchy) if hierarchy.exists() else {}
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        lines = [line.rstrip("\r\n") for line in handle]
    numbered = [(number, text) for number, text in enumerate(lines, start=1) if text.strip()]
    numbered = _sample_lines(numbered, limit, seed, max_per_label_set)
    rows: dict[str, list] = {name: [] for name in WEAK_SCHEMA.names}
    for number, text in numbered:
        smiles, labels, description, error = None, None, None, None
        fields = text.split("\t")
        if len(fields) != 2:
            error = f"expected 2 tab-separated fields, got {len(fields)}"
        else:
            smiles = fields[0].strip() or None
            try:
                labels = parse_label_set(fields[1])
                description = caption_from_labels(labels, smiles or "", seed, label_groups)
                if description is None:
                    error = "only meta labels"
            except ValueError as exc:
                error = f"bad label set: {exc}"
            if smiles is None:
                error = "empty SMILES"
        for name, value in zip(WEAK_SCHEMA.names, (number, smiles, labels, description, error), strict=True):
            rows[name].append(value)
    return pa.table(rows, schema=WEAK_SCHEMA)


def _sample_lines(
    numbered: list[tuple[int, str]], limit: int | None, seed: int, max_per_label_set: int | None
) -> list[tuple[int, str]]:
    order = list(range(len(numbered)))
    random.Random(seed).shuffle(order)
    per_set: dict[str, int] = {}
    keep = []
    for i in order:
        if limit is not None and len(keep) >= limit:
            break
        fields = numbered[i][1].split("\t")
        # Group key: the label set as a sorted tuple (set literal order is arbitrary); raw text if odd.
        try:
            key = repr(parse_label_set(fields[1])) if len(fields) == 2 else numbered[i][1]
        except ValueError:
            key = numbered[i][1]
        if max_per_label_set is not None and per_set.get(key, 0) >= max_per_label_set:
            continue
        per_set[key] = per_set.get(key, 0) + 1
        keep.append(i)
    return [numbered[i] for i in sorted(keep)]


def leakage_mask(inchikeys: Iterable[str | None], held_out: set[str]) -> list[bool]:
    """True for rows to KEEP in pre-training: InChIKey known and not among the held-out
    (validation/test) pair molecules. Rows without a key are dropped too (cannot be checked)."""
    return [key is not None and key not in held_out for key in inchikeys]
