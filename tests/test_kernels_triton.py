"""Every Triton kernel against its torch reference.

Without CUDA, tests/conftest.py sets TRITON_INTERPRET=1 before the kernel modules are imported,
so the kernels run in Triton's CPU interpreter. Outputs are poisoned (torch.empty returns
NaN / sentinel-filled memory) so an element a kernel forgets to write is caught. Shapes are odd
and small (the interpreter is slow) and block sizes are overridden to force several programs.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

import mvclam.kernels as K
from mvclam.kernels import triton_cross_attention as tca
from mvclam.kernels import triton_maxsim as tms
from mvclam.kernels import triton_pair_bias as tpb
from mvclam.kernels import triton_projection as tpr

try:  # tests/ is not a package: pytest's default import mode puts it on sys.path
    from test_kernels import _pair_bias_args
except ImportError:  # pragma: no cover - if tests/ ever becomes a package
    from tests.test_kernels import _pair_bias_args

if not torch.cuda.is_available():
    assert tms._INTERPRET, "conftest should have set TRITON_INTERPRET=1 before kernel import"

DEV = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Max error relative to the largest reference magnitude, per (lowest) input/output dtype.
REL_TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
INT_SENTINEL = 123  # never a valid index in these tests (fits uint8 too)


@pytest.fixture
def poison(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Make torch.empty return NaN / sentinel-filled tensors; counts allocations."""
    real_empty = torch.empty
    count = {"n": 0}

    def poisoned_empty(*args, **kwargs):
        t = real_empty(*args, **kwargs)
        count["n"] += 1
        if t.dtype.is_floating_point:
            t.fill_(float("nan"))
        elif t.dtype == torch.bool:
            t.fill_(True)
        else:
            t.fill_(INT_SENTINEL)
        return t

    monkeypatch.setattr(torch, "empty", poisoned_empty)
    return count


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    """Same shape, same +-inf pattern, no NaN, max |error| / max |expected| <= REL_TOL[dtype]."""
    assert actual.shape == expected.shape
    a, e = actual.float(), expected.float()
    assert not torch.isnan(a).any(), "NaN in kernel output (unwritten poisoned element?)"
    fin = torch.isfinite(e)
    assert torch.equal(a[~fin], e[~fin])
    if fin.any():
        err = (a[fin] - e[fin]).abs().max() / e[fin].abs().max().clamp_min(1e-6)
        assert err <= REL_TOL[dtype], f"relative error {err:.3g} > {REL_TOL[dtype]:g} for {dtype}"


def _unit(*shape: int, dtype: torch.dtype) -> torch.Tensor:
    return F.normalize(torch.randn(*shape), dim=-1).to(dtype).to(DEV)


def _token_mask(m: int, q: int, empty: tuple[int, ...] = (2,)) -> torch.Tensor:
    mask = torch.rand(m, q) > 0.35
    mask[:, 0] |= torch.rand(m) > 0.5
    for i in empty:
        mask[i] = False  # molecules without any valid token
    return mask.to(DEV)


# ----------------------------------------------------------------------------- MaxSim


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("masked", [True, False])
def test_maxsim_kernel(dtype: torch.dtype, masked: bool, poison: dict[str, int]) -> None:
    torch.manual_seed(10)
    q, t = _unit(5, 32, dtype=dtype), _unit(7, 9, 32, dtype=dtype)
    mask = _token_mask(7, 9) if masked else None
    rs, rb = K.maxsim_reference(q, t, mask)
    poison["n"] = 0
    s, b = tms.maxsim_triton(q, t, mask, return_argmax=True, block_m=4)  # 2 molecule blocks
    assert poison["n"] > 0
    assert s.dtype == torch.float32 and b.dtype == torch.int64
    assert_close(s, rs, dtype)
    assert torch.equal(b, rb)
    if masked:
        assert torch.isneginf(s[:, 2]).all() and (b[:, 2] == -1).all()
    s_only, none = tms.maxsim_triton(q, t, mask, return_argmax=False)
    assert none is None
    assert_close(s_only, rs, dtype)


@pytest.mark.parametrize(
    ("qdt", "tdt"),
    [(torch.float32, torch.float16), (torch.float32, torch.bfloat16), (torch.float16, torch.bfloat16)],
)
def test_maxsim_kernel_mixed_dtypes(qdt: torch.dtype, tdt: torch.dtype, poison: dict[str, int]) -> None:
    """float32 texts vs half tokens (hi/lo split dots) and float16 vs bfloat16 (float32 dots)."""
    torch.manual_seed(11)
    q, t = _unit(6, 48, dtype=qdt), _unit(5, 7, 48, dtype=tdt)
    mask = _token_mask(5, 7, empty=(4,))
    rs, rb = K.maxsim_reference(q, t, mask)
    s, b = tms.maxsim_triton(q, t, mask, return_argmax=True)
    # the reference computes in float32 from the given inputs, so this is float32-grade agreement
    assert_close(s, rs, torch.float32)
    assert torch.equal(b, rb)


def test_maxsim_kernel_d_loop_t_blocks_strides(poison: dict[str, int]) -> None:
    """D split over a loop (block_d < D), two text blocks, non-contiguous queries."""
    torch.manual_seed(12)
    qbig = _unit(40, 21, dtype=torch.float16).T  # (21, 40) with strides (1, 21)
    q = F.normalize(qbig.float(), dim=-1).half().T.contiguous().T
    assert not q.is_contiguous()
    t = _unit(6, 5, 40, dtype=torch.float16)
    mask = _token_mask(6, 5, empty=(0,))
    rs, rb = K.maxsim_reference(q, t, mask)
    s, b = tms.maxsim_triton(q, t, mask, block_d=16, block_t=16, block_m=4)
    assert_close(s, rs, torch.float32)
    assert torch.equal(b, rb)
    s32, b32 = tms.maxsim_triton(q.float(), t, mask, block_d=16)  # split path with D loop
    assert_close(s32, K.maxsim_reference(q.float(), t, mask)[0], torch.float32)
    assert torch.equal(b32, rb)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [1, 3, 9, 20])
def test_maxsim_topk_kernel(dtype: torch.dtype, k: int, poison: dict[str, int]) -> None:
    torch.manual_seed(13)
    m = 9
    q, t = _unit(5, 32, dtype=dtype), _unit(m, 7, 32, dtype=dtype)
    mask = _token_mask(m, 7, empty=(2, 6))
    rs, ri, rb = K.maxsim_topk_reference(q, t, mask, k=k)
    poison["n"] = 0
    s, i, b = tms.maxsim_topk_triton(q, t, mask, k=k, block_m=4)  # 3 blocks, last one partial
    assert poison["n"] > 0
    assert s.shape == (5, min(k, m))
    assert torch.equal(i, ri)
    assert torch.equal(b, rb)
    assert_close(s, rs, dtype)


def test_maxsim_topk_kernel_default_blocks_and_ties(poison: dict[str, int]) -> None:
    torch.manual_seed(14)
    base = _unit(10, 4, 16, dtype=torch.float32)
    # exact score ties between molecules m, m + 10, m + 20, m + 30: with k = 2, three or four
    # copies of the best molecule sit in one 32-molecule block and only the two lowest may win
    t = torch.cat([base] * 4)
    q = _unit(3, 16, dtype=torch.float32)
    mask = torch.ones(40, 4, dtype=torch.bool, device=DEV)
    mask[[5, 25, 33]] = False
    for k in (2, 40):
        rs, ri, rb = K.maxsim_topk_reference(q, t, mask, k=k)
        s, i, b = tms.maxsim_topk_triton(q, t, mask, k=k)  # block_m 32 -> 2 blocks
        assert torch.equal(i, ri) and torch.equal(b, rb)
        assert_close(s, rs, torch.float32)


# ----------------------------------------------------------------------------- cross-attention


def _attn_inputs(g: int, h: int, kq: int, n: int, dh: int, dtype: torch.dtype):
    q = torch.randn(g, h, kq, dh).to(dtype).to(DEV)
    k = torch.randn(g, h, n, dh).to(dtype).to(DEV)
    v = torch.randn(g, h, n, dh).to(dtype).to(DEV)
    mask = torch.rand(g, n) > 0.3
    mask[1] = False  # fully padded group -> zeros
    mask[2, :20] = False  # first key blocks fully masked, later ones not
    mask[2, -1] = True
    return q, k, v, mask.to(DEV)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_attention_kernel(dtype: torch.dtype, poison: dict[str, int]) -> None:
    torch.manual_seed(20)
    q, k, v, mask = _attn_inputs(4, 2, 5, 37, 24, dtype)
    ref = K.query_cross_attention_reference(q, k, v, mask)
    poison["n"] = 0
    out = tca.query_cross_attention_triton(q, k, v, mask, block_n=16)
    assert poison["n"] > 0
    assert out.dtype == dtype
    assert_close(out, ref, dtype)
    assert torch.equal(out[1], torch.zeros_like(out[1]))


def test_cross_attention_kernel_query_blocks_strides_scale(poison: dict[str, int]) -> None:
    torch.manual_seed(21)
    g, h, kq, n, dh = 3, 2, 19, 13, 16
    q = torch.randn(g, kq, h, dh, device=DEV).transpose(1, 2)  # (G, H, K, dh), non-contiguous
    kv = torch.randn(g, n, 2, h, dh, device=DEV)
    k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)
    mask = torch.rand(g, n, device=DEV) > 0.4
    mask[0] = False
    ref = K.query_cross_attention_reference(q, k, v, mask, scale=0.37)
    out = tca.query_cross_attention_triton(q, k, v, mask, scale=0.37, block_k=16, block_n=16)
    assert_close(out, ref, torch.float32)


# ----------------------------------------------------------------------------- pair bias


@pytest.mark.parametrize("dtype", DTYPES)
def test_pair_bias_kernel(dtype: torch.dtype, poison: dict[str, int]) -> None:
    args = [a.to(DEV) for a in _pair_bias_args(3, 11, n_types=5, kg=20, kh=24, h=6, seed=1)]
    # coordinates and learned parameters in the test dtype; the definition computes in float32
    args = [a.to(dtype) if a.is_floating_point() else a for a in args]
    ref = K.gaussian_pair_bias_reference(*args)
    poison["n"] = 0
    out = tpb.gaussian_pair_bias_triton(*args, block_i=2, block_j=8, block_kc=16)  # 36 tiles/molecule
    assert poison["n"] > 0
    assert out.dtype == torch.float32 and out.shape == (3, 6, 11, 11)
    assert_close(out, ref, torch.float32)
    mask = args[2]
    pad = ~(mask[:, :, None] & mask[:, None, :])
    assert (out.permute(0, 2, 3, 1)[pad] == 0).all()
    out_default = tpb.gaussian_pair_bias_triton(*args)
    assert_close(out_default, ref, torch.float32)


def test_pair_bias_kernel_tf32x3(poison: dict[str, int]) -> None:
    args = [a.to(DEV) for a in _pair_bias_args(2, 7, n_types=3, kg=16, kh=16, h=4, seed=2)]
    ref = K.gaussian_pair_bias_reference(*args)
    out = tpb.gaussian_pair_bias_triton(*args, precision="tf32x3")
    assert_close(out, ref, torch.float32)
    with pytest.raises(ValueError, match="precision"):
        tpb.gaussian_pair_bias_triton(*args, precision="fp8")


# ----------------------------------------------------------------------------- projection


@pytest.mark.parametrize(
    ("xdt", "wdt", "odt"),
    [
        (torch.float32, torch.float32, None),
        (torch.float16, torch.float16, None),
        (torch.bfloat16, torch.bfloat16, None),
        (torch.float32, torch.float32, torch.float16),
        (torch.bfloat16, torch.float32, torch.float16),
    ],
)
@pytest.mark.parametrize("with_bias", [True, False])
def test_projection_kernel(
    xdt: torch.dtype, wdt: torch.dtype, odt: torch.dtype | None, with_bias: bool, poison: dict[str, int]
) -> None:
    torch.manual_seed(30)
    x = torch.randn(3, 7, 37).to(xdt).to(DEV)
    x[0, 0] = 0.0  # zero row -> zero output (no NaN)
    w = (torch.randn(24, 37) * 0.2).to(wdt).to(DEV)
    b = torch.randn(24).to(wdt).to(DEV) if with_bias else None
    ref = K.project_normalize_reference(x, w, b, odt)
    poison["n"] = 0
    out = tpr.project_normalize_triton(x, w, b, odt, block_r=16, block_hin=16)  # 2 row blocks, 3 chunks
    assert poison["n"] > 0
    assert out.dtype == (odt or xdt) and out.shape == (3, 7, 24)
    assert_close(out, ref, odt or xdt)  # inputs are exact for both; the output cast rounds
    if not with_bias:
        assert (out[0, 0] == 0).all()


# ----------------------------------------------------------------------------- public dispatch -> Triton


def test_public_api_dispatches_to_triton(monkeypatch: pytest.MonkeyPatch, poison: dict[str, int]) -> None:
    """MVCLAM_KERNELS=triton routes each public function through its Triton kernel."""
    monkeypatch.setenv("MVCLAM_KERNELS", "triton")
    calls: list[str] = []

    def spy(mod, name):
        real = getattr(mod, name)

        def wrapped(*a, **kw):
            calls.append(name)
            return real(*a, **kw)

        monkeypatch.setattr(mod, name, wrapped)

    for mod, name in [
        (tms, "maxsim_triton"),
        (tms, "maxsim_topk_triton"),
        (tca, "query_cross_attention_triton"),
        (tpb, "gaussian_pair_bias_triton"),
        (tpr, "project_normalize_triton"),
    ]:
        spy(mod, name)
    torch.manual_seed(40)
    q, t = _unit(3, 16, dtype=torch.float16), _unit(5, 6, 16, dtype=torch.float16)
    mask = _token_mask(5, 6, empty=(1,))
    s, b = K.maxsim(q, t, mask, return_argmax=True)
    rs, rb = K.maxsim_reference(q, t, mask)
    assert_close(s, rs, torch.float32)
    assert torch.equal(b, rb)
    assert_close(K.maxsim(q, t, mask), rs, torch.float32)
    ts, ti, tb = K.maxsim_topk(q, t, mask, k=3)
    rts, rti, rtb = K.maxsim_topk_reference(q, t, mask, k=3)
    assert torch.equal(ti, rti) and torch.equal(tb, rtb)
    assert_close(ts, rts, torch.float32)
    aq, ak, av, am = _attn_inputs(3, 2, 4, 23, 16, torch.float32)
    assert_close(K.query_cross_attention(aq, ak, av, am), K.query_cross_attention_reference(aq, ak, av, am), torch.float32)  # fmt: skip
    pargs = [a.to(DEV) for a in _pair_bias_args(2, 6, n_types=3, kg=8, kh=8, h=2)]
    assert_close(K.gaussian_pair_bias(*pargs), K.gaussian_pair_bias_reference(*pargs), torch.float32)
    x, w = torch.randn(4, 10, device=DEV), torch.randn(16, 10, device=DEV)
    assert_close(K.project_normalize(x, w, None), K.project_normalize_reference(x, w, None), torch.float32)
    assert calls == [
        "maxsim_triton",
        "maxsim_triton",
        "maxsim_topk_triton",
        "query_cross_attention_triton",
        "gaussian_pair_bias_triton",
        "project_normalize_triton",
    ]
