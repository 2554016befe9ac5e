"""MV-CLAM's alignment losses, as pure functions of model outputs.

* Token-level contrastive: s(m, t) = max_k cos(query token k of m, [CLS] of t), symmetric InfoNCE.
* Molecule–text matching: binary classification of (molecule, text) pairs, negatives mined from the
  contrastive similarities (BLIP-2's hard-negative sampling).
* Captioning: next-token cross-entropy of the text decoded with the query tokens as prefix.

Pairs that share a molecule (the same InChIKey with several descriptions) are not negatives of
each other: ``group_ids`` marks them, and they are removed from the contrastive denominators and
never drawn as hard negatives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def token_similarity(molecule_tokens: torch.Tensor, text_vectors: torch.Tensor) -> torch.Tensor:
    """(B_m, T, D) tokens and (B_t, D) texts → (B_m, B_t) max-over-tokens cosine (inputs L2-normalised)."""
    return torch.einsum("mkd,td->mtk", molecule_tokens, text_vectors).amax(dim=-1)


def _same_group(group_ids: torch.Tensor | None, size: int, device: torch.device) -> torch.Tensor:
    if group_ids is None:
        return torch.eye(size, dtype=torch.bool, device=device)
    return group_ids[:, None] == group_ids[None, :]


def token_contrastive_loss(
    molecule_tokens: torch.Tensor,
    text_vectors: torch.Tensor,
    logit_scale: torch.Tensor | float,
    group_ids: torch.Tensor | None = None,
    extra_texts: torch.Tensor | None = None,
    extra_text_groups: torch.Tensor | None = None,
    extra_molecules: torch.Tensor | None = None,
    extra_molecule_groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE on max-over-tokens similarities; row i of each side is the positive of row i.

    ``extra_texts`` (X, D) are further candidates of every molecule (e.g. a bank of cached training
    texts) and ``extra_molecules`` (Y, 2K, D) further candidates of every text (e.g. a queue of
    earlier steps' molecule tokens); their ``*_groups`` mark their molecules, and candidates of the
    query's own molecule are dropped from the denominators like in-batch duplicates.
    """
    batch = molecule_tokens.shape[0]
    device = molecule_tokens.device
    logits = token_similarity(molecule_tokens, text_vectors) * logit_scale
    same = _same_group(group_ids, batch, device)
    # Other rows of the same molecule are positives too: drop them from the denominators.
    false_negatives = same & ~torch.eye(batch, dtype=torch.bool, device=device)
    logits = logits.masked_fill(false_negatives, float("-inf"))
    targets = torch.arange(batch, device=device)
    molecule_to_text, text_to_molecule = logits, logits.t()
    if extra_texts is not None and len(extra_texts):
        extra = token_similarity(molecule_tokens, extra_texts) * logit_scale  # (B, X)
        extra = extra.masked_fill(
            _cross_group(group_ids, extra_text_groups, extra.shape, device), float("-inf")
        )
        molecule_to_text = torch.cat([molecule_to_text, extra], dim=1)
    if extra_molecules is not None and len(extra_molecules):
        extra = token_similarity(extra_molecules, text_vectors).t() * logit_scale  # (B, Y)
        extra = extra.masked_fill(
            _cross_group(group_ids, extra_molecule_groups, extra.shape, device), float("-inf")
        )
        text_to_molecule = torch.cat([text_to_molecule, extra], dim=1)
    return 0.5 * (F.cross_entropy(molecule_to_text, targets) + F.cross_entropy(text_to_molecule, targets))


def _cross_group(
    group_ids: torch.Tensor | None, extra_groups: torch.Tensor | None, shape: torch.Size, device: torch.device
) -> torch.Tensor:
    """(B, X) True where an extra candidate belongs to the query row's molecule."""
    if group_ids is None or extra_groups is None:
        return torch.zeros(shape, dtype=torch.bool, device=device)
    return group_ids.to(device)[:, None] == extra_groups.to(device)[None, :]


def sample_hard_negatives(
    similarity: torch.Tensor, group_ids: torch.Tensor | None = None, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """For a (B_m, B_t) similarity matrix, draw per text a negative molecule and per molecule a negative text.

    Draws are proportional to softmax(similarity) over the rows that are not the same molecule.
    Returns index tensors (negative_molecule_for_text, negative_text_for_molecule), -1 where a
    row has no valid negative (e.g. a batch made of one molecule).
    """
    batch = similarity.shape[0]
    same = _same_group(group_ids, batch, similarity.device)
    weights = similarity.detach().float().softmax(dim=1).masked_fill(same, 0.0)

    def draw(w: torch.Tensor) -> torch.Tensor:
        has_negative = w.sum(dim=1) > 0
        picks = torch.full((w.shape[0],), -1, dtype=torch.long, device=w.device)
        if has_negative.any():
            picks[has_negative] = torch.multinomial(w[has_negative], 1, generator=generator).squeeze(1)
        return picks

    negative_text_for_molecule = draw(weights)
    weights_t = similarity.detach().float().t().softmax(dim=1).masked_fill(same, 0.0)
    negative_molecule_for_text = draw(weights_t)
    return negative_molecule_for_text, negative_text_for_molecule


def matching_loss(match_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of (P, 2) matching logits against 0/1 labels (1 = the text describes the molecule)."""
    return F.cross_entropy(match_logits, labels)


def captioning_loss(
    token_logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Next-token cross-entropy: position t predicts token t+1; padding is ignored."""
    predictions = token_logits[:, :-1]
    targets = input_ids[:, 1:].masked_fill(attention_mask[:, 1:] == 0, -100)
    return F.cross_entropy(
        predictions.reshape(-1, predictions.shape[-1]), targets.reshape(-1), ignore_index=-100
    )
