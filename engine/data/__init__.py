"""Training and evaluation data: pair files, L+M-24 weak labels, the fixed split and the view cache.

table = read_pairs("pairs/chebi20_validation.tsv")          # cid, smiles, description, source, line, error
split_of(inchikey)                                          # "train" | "validation" | "test" (split.py)
prepare_pairs(files, "runs/data/v2")                         # views once per molecule -> Parquet
prepare_weak_labels("lpm24/train_props.txt.gz", "runs/data/v2", limit=30_000)
data = PairDataset.load("runs/data/v2", "train")             # .views, .descriptions, .inchikeys, .group_ids
"""

from mvclam.engine.data.dataset import PairDataset
from mvclam.engine.data.pairs import PAIR_TABLE_SCHEMA, read_pair_files, read_pairs
from mvclam.engine.data.prepare import held_out_inchikeys, prepare_pairs, prepare_weak_labels
from mvclam.engine.data.split import SPLITS, Split, split_bucket, split_of, split_rule
from mvclam.engine.data.weak import caption_from_labels, leakage_mask, parse_label_set, read_weak_labels

__all__ = [
    "PAIR_TABLE_SCHEMA",
    "SPLITS",
    "PairDataset",
    "Split",
    "caption_from_labels",
    "held_out_inchikeys",
    "leakage_mask",
    "parse_label_set",
    "prepare_pairs",
    "prepare_weak_labels",
    "read_pair_files",
    "read_pairs",
    "read_weak_labels",
    "split_bucket",
    "split_of",
    "split_rule",
]
