"""Input checks and small helpers shared by the kernel entry points and their Triton versions.

The import graph of ``kernels`` is one-way: an op module (``maxsim``, ``pair_bias``, ...) may
import its ``triton_*`` module (lazily), and both import this module; nothing here imports an op
module, a ``triton_*`` module or Triton itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Widest output row the Triton projection kernel keeps in one register tile (triton_projection.py).
TRITON_MAX_D = 1024
# Widest hidden layer / head count the Triton pair-bias kernel keeps on chip (triton_pair_bias.py).
TRITON_MAX_HIDDEN = 256


def check_tensor(
    name: str,
    t: object,
    ndim: int,
    dtypes: tuple[torch.dtype, ...] | None = FLOAT_DTYPES,
) -> torch.Tensor:
    """Raise a clear ``TypeError``/``ValueError`` unless ``t`` is a tensor of ``ndim`` dims and allowed dtype."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dims, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        raise TypeError(f"{name} has dtype {t.dtype}; expected one of {dtypes}")
    return t


def check_same_device(**tensors: torch.Tensor | None) -> None:
    devs = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devs.values())) > 1:
        raise ValueError(f"all tensors must be on one device, got {devs}")


def next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


# ----------------------------------------------------------------------------- MaxSim


def check_maxsim_inputs(queries: torch.Tensor, tokens: torch.Tensor, token_mask: torch.Tensor | None) -> None:
    check_tensor("queries", queries, 2)
    check_tensor("tokens", tokens, 3)
    if queries.shape[1] != tokens.shape[2]:
        raise ValueError(
            f"queries (T, D={queries.shape[1]}) and tokens (M, Q, D={tokens.shape[2]}) disagree on D"
        )
    if token_mask is not None:
        check_tensor("token_mask", token_mask, 2, (torch.bool,))
        if tuple(token_mask.shape) != tuple(tokens.shape[:2]):
            raise ValueError(
                f"token_mask shape {tuple(token_mask.shape)} != tokens (M, Q) {tuple(tokens.shape[:2])}"
            )
    check_same_device(queries=queries, tokens=tokens, token_mask=token_mask)


def merge_topk(
    scores: torch.Tensor, index: torch.Tensor, best: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-``k`` of candidate rows (T, C), sorted by (score descending, molecule index ascending).

    Two stable sorts give an exact, deterministic tie order (lower molecule index first); candidate
    slots that hold no molecule must carry a huge index so that they lose ties against real ``-inf``.
    """
    order = torch.sort(index, dim=1, stable=True).indices
    scores, index, best = scores.gather(1, order), index.gather(1, order), best.gather(1, order)
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    return scores.gather(1, order), index.gather(1, order), best.gather(1, order)


# ----------------------------------------------------------------------------- cross-attention


def check_attention_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor) -> None:
    check_tensor("q", q, 4)
    check_tensor("k", k, 4)
    check_tensor("v", v, 4)
    check_tensor("key_mask", key_mask, 2, (torch.bool,))
    g, h, _, dh = q.shape
    if tuple(k.shape) != tuple(v.shape):
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must have the same shape")
    if k.shape[0] != g or k.shape[1] != h or k.shape[3] != dh:
        raise ValueError(f"q (G,H,K,dh)={tuple(q.shape)} and k (G,H,N,dh)={tuple(k.shape)} disagree")
    if tuple(key_mask.shape) != (g, k.shape[2]):
        raise ValueError(f"key_mask shape {tuple(key_mask.shape)} != (G, N) {(g, k.shape[2])}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    check_same_device(q=q, k=k, v=v, key_mask=key_mask)


# ----------------------------------------------------------------------------- projection


def check_projection_inputs(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out_dtype: torch.dtype | None
) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        raise TypeError("x must be a tensor of shape (..., Hin)")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"x has dtype {x.dtype}; expected one of {FLOAT_DTYPES}")
    check_tensor("weight", weight, 2)
    if weight.shape[1] != x.shape[-1]:
        raise ValueError(f"weight (D, Hin={weight.shape[1]}) does not match x (..., Hin={x.shape[-1]})")
    if bias is not None:
        check_tensor("bias", bias, 1)
        if bias.numel() != weight.shape[0]:
            raise ValueError(f"bias has {bias.numel()} entries, weight has D={weight.shape[0]} rows")
    if out_dtype is not None and out_dtype not in FLOAT_DTYPES:
        raise TypeError(f"out_dtype {out_dtype} not one of {FLOAT_DTYPES}")
    check_same_device(x=x, weight=weight, bias=bias)


# ----------------------------------------------------------------------------- pair bias


@dataclass(frozen=True)
class PairBiasWeights:
    """The learned tensors of the Uni-Mol pair bias (GaussianLayer + NonLinearHead), as one bundle.

    pair_mul, pair_add: (T*T,) per-type-pair affine of the distance (Uni-Mol ``mul``/``bias``);
    means, stds: (K,) Gaussian centres / widths; w1: (Kh, K), b1: (Kh,), w2: (H, Kh), b2: (H,).
    Float32/float16/bfloat16; gradients flow through the torch reference as through the tensors.
    """

    pair_mul: torch.Tensor
    pair_add: torch.Tensor
    means: torch.Tensor
    stds: torch.Tensor
    w1: torch.Tensor
    b1: torch.Tensor
    w2: torch.Tensor
    b2: torch.Tensor

    @classmethod
    def of(cls, *weights: PairBiasWeights | torch.Tensor) -> PairBiasWeights:
        """One bundle, or the eight tensors in field order (the positional kernel signature)."""
        if len(weights) == 1 and isinstance(weights[0], PairBiasWeights):
            return weights[0]
        if len(weights) != 8 or any(isinstance(w, PairBiasWeights) for w in weights):
            raise TypeError(
                "expected one PairBiasWeights or the 8 tensors pair_mul, pair_add, means, stds, "
                f"w1, b1, w2, b2; got {len(weights)} arguments"
            )
        return cls(*weights)  # type: ignore[arg-type]

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The eight tensors in field order (the kernel's argument order)."""
        return (self.pair_mul, self.pair_add, self.means, self.stds, self.w1, self.b1, self.w2, self.b2)

    @property
    def hidden_size(self) -> int:
        return self.w1.shape[0]

    @property
    def num_heads(self) -> int:
        return self.w2.shape[0]

    def check(self, coords: torch.Tensor, atom_types: torch.Tensor, atom_mask: torch.Tensor) -> int:
        """Validate the kernel inputs (atoms, then weights, then one device); returns T (atom types)."""
        check_tensor("coords", coords, 3)
        if coords.shape[2] != 3:
            raise ValueError(f"coords must be (B, N, 3), got {tuple(coords.shape)}")
        b, n = coords.shape[:2]
        check_tensor("atom_types", atom_types, 2, (torch.int64, torch.int32))
        check_tensor("atom_mask", atom_mask, 2, (torch.bool,))
        for name, t in (("atom_types", atom_types), ("atom_mask", atom_mask)):
            if tuple(t.shape) != (b, n):
                raise ValueError(f"{name} shape {tuple(t.shape)} != (B, N) {(b, n)}")
        pair_mul, pair_add, means, stds, w1, b1, w2, b2 = self.tensors()
        for name, t in (("pair_mul", pair_mul), ("pair_add", pair_add), ("means", means), ("stds", stds)):
            check_tensor(name, t, 1)
        n_types = math.isqrt(pair_mul.numel())
        if n_types * n_types != pair_mul.numel() or n_types == 0:
            raise ValueError(f"len(pair_mul)={pair_mul.numel()} is not a positive square T*T")
        if pair_add.numel() != pair_mul.numel():
            raise ValueError(f"pair_add has {pair_add.numel()} entries, pair_mul {pair_mul.numel()}")
        kg = means.numel()
        if stds.numel() != kg:
            raise ValueError(f"means ({kg}) and stds ({stds.numel()}) must have the same length K")
        check_tensor("w1", w1, 2)
        check_tensor("b1", b1, 1)
        check_tensor("w2", w2, 2)
        check_tensor("b2", b2, 1)
        if w1.shape[1] != kg or b1.numel() != w1.shape[0]:
            raise ValueError(
                f"w1 must be (Kh, K={kg}) with b1 (Kh,), got {tuple(w1.shape)}, {tuple(b1.shape)}"
            )
        if w2.shape[1] != w1.shape[0] or b2.numel() != w2.shape[0]:
            raise ValueError(
                f"w2 must be (H, Kh={w1.shape[0]}) with b2 (H,), got {tuple(w2.shape)}, {tuple(b2.shape)}"
            )
        check_same_device(
            coords=coords, atom_types=atom_types, atom_mask=atom_mask, pair_mul=pair_mul, pair_add=pair_add,
            means=means, stds=stds, w1=w1, b1=b1, w2=w2, b2=b2,
        )  # fmt: skip
        return n_types
