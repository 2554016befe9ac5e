"""Dispatch rules and torch references of ``mvclam.kernels`` (no Triton needed).

The Triton kernels themselves are checked against these references in test_kernels_triton.py.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import mvclam.kernels as K
from mvclam.kernels import dispatch


def _unit(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return F.normalize(torch.randn(*shape), dim=-1).to(dtype)


# ----------------------------------------------------------------------------- dispatch


def test_import_is_cheap_and_works_without_triton() -> None:
    code = (
        "import sys\n"
        "import mvclam.kernels as K\n"
        "assert 'triton' not in sys.modules, 'importing mvclam.kernels imported triton'\n"
        "import torch\n"
        "s = K.maxsim(torch.randn(2, 4), torch.randn(3, 5, 4))\n"
        "assert 'triton' not in sys.modules, 'a CPU call imported triton'\n"
        "sys.modules['triton'] = None  # now make triton unimportable\n"
        "K.dispatch.triton_available.cache_clear()\n"
        "import os\n"
        "os.environ['MVCLAM_KERNELS'] = 'triton'\n"
        "try:\n"
        "    K.maxsim(torch.randn(2, 4), torch.randn(3, 5, 4))\n"
        "except K.KernelUnavailableError as e:\n"
        "    assert 'cannot be imported' in str(e)\n"
        "else:\n"
        "    raise AssertionError('forced triton without triton did not raise')\n"
        "print('ok', tuple(s.shape))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("MVCLAM_KERNELS", "TRITON_INTERPRET")}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "ok (2, 3)" in res.stdout


def test_auto_uses_torch_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MVCLAM_KERNELS", raising=False)
    assert dispatch.kernel_mode() == "auto"
    assert dispatch.use_triton(torch.randn(3), None, torch.ones(2, dtype=torch.bool)) is False


def test_auto_rules_with_cuda_tensors(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend tensors are on CUDA to check the auto rules without a GPU."""
    monkeypatch.setenv("MVCLAM_KERNELS", "auto")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(dispatch, "_on_cuda", lambda t: True)
    monkeypatch.setattr(dispatch, "triton_available", lambda: True)
    x, w = torch.randn(4), torch.randn(4, requires_grad=True)
    assert dispatch.use_triton(x) is True
    assert dispatch.use_triton(x, w) is False  # autograd needed: Triton is forward-only
    with torch.no_grad():
        assert dispatch.use_triton(x, w) is True
    assert dispatch.use_triton() is False
    monkeypatch.setattr(dispatch, "triton_available", lambda: False)
    assert dispatch.use_triton(x) is False
    monkeypatch.setattr(dispatch, "triton_available", lambda: True)
    monkeypatch.setattr(dispatch, "_on_cuda", lambda t: t.dim() == 1)
    assert dispatch.use_triton(x, torch.randn(2, 2)) is False  # one CPU tensor -> reference


def test_torch_mode_always_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MVCLAM_KERNELS", "torch")
    monkeypatch.setattr(dispatch, "_on_cuda", lambda t: True)
    monkeypatch.setattr(dispatch, "triton_available", lambda: True)
    assert dispatch.use_triton(torch.randn(3)) is False


def test_triton_mode_forces_or_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MVCLAM_KERNELS", "triton")
    monkeypatch.setattr(dispatch, "triton_available", lambda: True)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert dispatch.use_triton(torch.randn(3)) is True
    with pytest.raises(dispatch.KernelUnavailableError, match="forward-only"):
        dispatch.use_triton(torch.randn(3, requires_grad=True))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(dispatch.KernelUnavailableError, match="TRITON_INTERPRET"):
        dispatch.use_triton(torch.randn(3))
    monkeypatch.setattr(dispatch, "triton_available", lambda: False)
    with pytest.raises(dispatch.KernelUnavailableError, match="cannot be imported"):
        dispatch.use_triton(torch.randn(3))


def test_invalid_mode_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MVCLAM_KERNELS", "cuda")
    with pytest.raises(ValueError, match="MVCLAM_KERNELS"):
        dispatch.use_triton(torch.randn(3))


def test_public_functions_use_reference_and_keep_autograd(monkeypatch: pytest.MonkeyPatch) -> None:
    """auto + grad-requiring inputs -> differentiable reference, even if tensors 'were' on CUDA."""
    monkeypatch.setenv("MVCLAM_KERNELS", "auto")
    monkeypatch.setattr(dispatch, "_on_cuda", lambda t: True)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    torch.manual_seed(0)
    q = torch.randn(3, 2, 4, 8, requires_grad=True)
    k, v = torch.randn(3, 2, 6, 8), torch.randn(3, 2, 6, 8)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[1] = False
    out = K.query_cross_attention(q, k, v, mask)
    out.sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()
    assert torch.equal(out[1], torch.zeros_like(out[1]))

    w = torch.randn(5, 8, requires_grad=True)
    y = K.project_normalize(torch.randn(2, 8), w, None)
    y.pow(2).sum().backward()
    assert w.grad is not None

    args = _pair_bias_args(2, 5, n_types=3, kg=6, kh=7, h=2)
    w1 = args[7].clone().requires_grad_(True)
    bias = K.gaussian_pair_bias(*args[:7], w1, *args[8:])
    bias.sum().backward()
    assert w1.grad is not None and torch.isfinite(w1.grad).all()


# ----------------------------------------------------------------------------- MaxSim reference


def _naive_maxsim(queries, tokens, mask):
    sim = torch.einsum("td,mqd->tmq", queries.float(), tokens.float())
    if mask is not None:
        sim = sim.masked_fill(~mask[None], float("-inf"))
    return sim.max(dim=2)


def test_maxsim_reference_definition() -> None:
    torch.manual_seed(1)
    q, t = _unit(5, 32), _unit(7, 9, 32)
    mask = torch.rand(7, 9) > 0.4
    mask[3] = False
    mask[5] = True
    scores, best = K.maxsim_reference(q, t, mask)
    assert scores.dtype == torch.float32 and best.dtype == torch.int64
    ns, nb = _naive_maxsim(q, t, mask)
    assert torch.allclose(scores, ns, rtol=0, atol=1e-6)
    assert torch.isneginf(scores[:, 3]).all() and (best[:, 3] == -1).all()
    valid = torch.isfinite(ns)
    assert torch.equal(best[valid], nb[valid])
    # best_token points at a valid token whose dot product is the score
    tb = t[torch.arange(7)[None].expand(5, 7)[valid], best[valid]]
    qq = q[:, None].expand(5, 7, 32)[valid]
    assert torch.allclose((qq * tb).sum(-1), scores[valid], atol=1e-6)
    assert mask[torch.arange(7)[None].expand(5, 7)[valid], best[valid]].all()
    assert torch.equal(K.maxsim(q, t, mask), scores)
    s2, b2 = K.maxsim(q, t, mask, return_argmax=True)
    assert torch.equal(s2, scores) and torch.equal(b2, best)


def test_maxsim_reference_is_differentiable() -> None:
    """Training scores texts against molecules with maxsim: gradients must flow (chunked too)."""
    torch.manual_seed(6)
    q = _unit(3, 8).requires_grad_(True)
    t = _unit(5, 4, 8).requires_grad_(True)
    mask = torch.rand(5, 4) > 0.3
    mask[:, 0] = True
    s = K.maxsim(q, t, mask)
    w = torch.randn(3, 5)
    (s * w).sum().backward()
    q2, t2 = q.detach().clone().requires_grad_(True), t.detach().clone().requires_grad_(True)
    (_naive_maxsim(q2, t2, mask)[0] * w).sum().backward()
    assert torch.allclose(q.grad, q2.grad, atol=1e-6) and torch.allclose(t.grad, t2.grad, atol=1e-6)
    q.grad = None
    (K.maxsim_reference(q, t, mask, chunk_size=2)[0] * w).sum().backward()
    assert torch.allclose(q.grad, q2.grad, atol=1e-6)


@pytest.mark.parametrize("chunk", [1, 3, 6, 1000])
def test_maxsim_reference_chunking_equals_unchunked(chunk: int) -> None:
    torch.manual_seed(2)
    q, t = _unit(4, 16, dtype=torch.float16), _unit(13, 5, 16, dtype=torch.float16)
    mask = torch.rand(13, 5) > 0.3
    mask[0] = False
    s_full, b_full = K.maxsim_reference(q, t, mask, chunk_size=13)
    s, b = K.maxsim_reference(q, t, mask, chunk_size=chunk)
    assert torch.allclose(s, s_full, rtol=0, atol=1e-6)
    assert torch.equal(torch.isneginf(s), torch.isneginf(s_full))
    assert torch.equal(b, b_full)


def test_maxsim_topk_reference() -> None:
    torch.manual_seed(3)
    q, t = _unit(6, 16), _unit(11, 4, 16)
    mask = torch.rand(11, 4) > 0.3
    mask[[2, 7]] = False
    full, best = K.maxsim_reference(q, t, mask)
    for k, chunk in [(1, None), (4, 3), (11, 2), (50, 5)]:
        s, i, b = K.maxsim_topk_reference(q, t, mask, k=k, chunk_size=chunk)
        kk = min(k, 11)
        assert s.shape == i.shape == b.shape == (6, kk)
        es, ei = torch.sort(full, dim=1, descending=True, stable=True)
        assert torch.equal(i, ei[:, :kk])
        assert torch.allclose(s, es[:, :kk], rtol=0, atol=1e-6)
        assert torch.equal(torch.isneginf(s), torch.isneginf(es[:, :kk]))
        assert torch.equal(b, best.gather(1, i))
    # public dispatch on CPU = reference
    s, i, b = K.maxsim_topk(q, t, mask, k=4)
    assert torch.equal(i, K.maxsim_topk_reference(q, t, mask, k=4)[1])


def test_maxsim_topk_ties_prefer_lower_index() -> None:
    t = _unit(3, 2, 8)
    tokens = torch.cat([t, t, t])  # molecules m, m+3, m+6 identical
    q = _unit(2, 8)
    mask = torch.ones(9, 2, dtype=torch.bool)
    mask[[1, 4, 7]] = False  # three -inf ties too
    s, i, _ = K.maxsim_topk_reference(q, tokens, mask, k=9, chunk_size=2)
    for row in range(2):
        for a in range(8):
            if s[row, a] == s[row, a + 1]:
                assert i[row, a] < i[row, a + 1]
    assert torch.equal(i[:, -3:], torch.tensor([[1, 4, 7]] * 2))


def test_maxsim_input_checks() -> None:
    with pytest.raises(ValueError, match="disagree on D"):
        K.maxsim(torch.randn(2, 4), torch.randn(3, 5, 6))
    with pytest.raises(ValueError, match="token_mask shape"):
        K.maxsim(torch.randn(2, 4), torch.randn(3, 5, 4), torch.ones(3, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="token_mask"):
        K.maxsim(torch.randn(2, 4), torch.randn(3, 5, 4), torch.ones(3, 5))
    with pytest.raises(ValueError, match="k must be"):
        K.maxsim_topk(torch.randn(2, 4), torch.randn(3, 5, 4), k=0)
    with pytest.raises(TypeError, match="dtype"):
        K.maxsim(torch.randn(2, 4).double(), torch.randn(3, 5, 4))


# ----------------------------------------------------------------------------- cross-attention reference


def test_cross_attention_reference_matches_sdpa_and_zeros_padded_groups() -> None:
    torch.manual_seed(4)
    g, h, kq, n, dh = 4, 3, 5, 11, 16
    q, k, v = torch.randn(g, h, kq, dh), torch.randn(g, h, n, dh), torch.randn(g, h, n, dh)
    mask = torch.rand(g, n) > 0.3
    mask[:, 0] = True
    mask[2] = False
    out = K.query_cross_attention_reference(q, k, v, mask, scale=0.7)
    keep = [0, 1, 3]
    ref = F.scaled_dot_product_attention(
        q[keep], k[keep], v[keep], attn_mask=mask[keep][:, None, None, :], scale=0.7
    )
    assert torch.allclose(out[keep], ref, atol=1e-5)
    assert torch.equal(out[2], torch.zeros_like(out[2]))
    default = K.query_cross_attention(q, k, v, mask)
    assert torch.allclose(default, K.query_cross_attention_reference(q, k, v, mask, scale=dh**-0.5))
    assert K.query_cross_attention(q.half(), k.half(), v.half(), mask).dtype == torch.float16


def test_cross_attention_input_checks() -> None:
    q, k = torch.randn(2, 1, 3, 8), torch.randn(2, 1, 5, 8)
    with pytest.raises(ValueError, match="key_mask"):
        K.query_cross_attention(q, k, k, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="dtypes differ"):
        K.query_cross_attention(q, k.half(), k.half(), torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="disagree"):
        K.query_cross_attention(q, torch.randn(2, 1, 5, 4), torch.randn(2, 1, 5, 4), torch.ones(2, 5).bool())


# ----------------------------------------------------------------------------- pair-bias reference


def _pair_bias_args(b: int, n: int, *, n_types: int, kg: int, kh: int, h: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    coords = torch.randn(b, n, 3, generator=gen) * 2.0
    mask = torch.rand(b, n, generator=gen) > 0.25
    mask[:, 0] = True
    if b > 1:
        mask[1] = False  # a fully padded molecule
    types = torch.randint(0, n_types, (b, n), generator=gen)
    types[~mask] = 10_000  # garbage on padding must be ignored
    return (
        coords,
        types,
        mask,
        torch.rand(n_types * n_types, generator=gen) + 0.5,
        torch.randn(n_types * n_types, generator=gen) * 0.1,
        torch.rand(kg, generator=gen) * 4.0,
        torch.rand(kg, generator=gen) * 1.5 - 0.5,  # some negative: |std| is used
        torch.randn(kh, kg, generator=gen) * 0.3,
        torch.randn(kh, generator=gen) * 0.1,
        torch.randn(h, kh, generator=gen) * 0.3,
        torch.randn(h, generator=gen) * 0.1,
    )


class _UniMolGaussian(torch.nn.Module):
    """Literal Uni-Mol GaussianLayer + NonLinearHead, to check the reference's definition."""

    def __init__(self, args) -> None:
        super().__init__()
        _, _, _, mul, add, means, stds, w1, b1, w2, b2 = args
        kg, n_pairs = means.numel(), mul.numel()
        self.means, self.stds = torch.nn.Embedding(1, kg), torch.nn.Embedding(1, kg)
        self.mul, self.bias = torch.nn.Embedding(n_pairs, 1), torch.nn.Embedding(n_pairs, 1)
        self.means.weight.data[0], self.stds.weight.data[0] = means, stds
        self.mul.weight.data[:, 0], self.bias.weight.data[:, 0] = mul, add
        self.l1, self.l2 = torch.nn.Linear(kg, w1.shape[0]), torch.nn.Linear(w1.shape[0], w2.shape[0])
        self.l1.weight.data, self.l1.bias.data, self.l2.weight.data, self.l2.bias.data = w1, b1, w2, b2
        self.kg = kg

    def forward(self, x, edge_type):
        mul, bias = self.mul(edge_type), self.bias(edge_type)
        x = (mul * x.unsqueeze(-1) + bias).expand(-1, -1, -1, self.kg)
        mean, std = self.means.weight.view(-1), self.stds.weight.view(-1).abs() + 1e-5
        g = torch.exp(-0.5 * ((x - mean) / std) ** 2) / ((2 * math.pi) ** 0.5 * std)
        return self.l2(F.gelu(self.l1(g))).permute(0, 3, 1, 2)


def test_pair_bias_reference_matches_unimol_layers() -> None:
    args = _pair_bias_args(3, 9, n_types=4, kg=10, kh=12, h=3)
    coords, types, mask = args[:3]
    out = K.gaussian_pair_bias_reference(*args)
    assert out.shape == (3, 3, 9, 9) and out.dtype == torch.float32
    dist = torch.cdist(coords, coords)
    t = torch.where(mask, types, 0)
    expect = _UniMolGaussian(args)(dist, t[:, :, None] * 4 + t[:, None, :])
    valid = (mask[:, :, None] & mask[:, None, :])[:, None].expand_as(out)
    assert torch.allclose(out[valid], expect[valid], rtol=1e-5, atol=1e-5)
    assert (out[~valid] == 0).all()
    assert (out[1] == 0).all()
    assert torch.equal(K.gaussian_pair_bias(*args), out)


def test_pair_bias_input_checks() -> None:
    args = list(_pair_bias_args(2, 5, n_types=3, kg=6, kh=7, h=2))
    bad = list(args)
    bad[3] = torch.rand(8)
    with pytest.raises(ValueError, match="square"):
        K.gaussian_pair_bias(*bad)
    bad = list(args)
    bad[0] = torch.randn(2, 5, 2)
    with pytest.raises(ValueError, match="coords"):
        K.gaussian_pair_bias(*bad)
    bad = list(args)
    bad[9] = torch.randn(2, 6)
    with pytest.raises(ValueError, match="w2"):
        K.gaussian_pair_bias(*bad)


# ----------------------------------------------------------------------------- projection reference


def test_projection_reference() -> None:
    torch.manual_seed(5)
    x = torch.randn(2, 3, 20)
    x[0, 1] = 0.0
    w = torch.randn(12, 20)
    y = K.project_normalize(x, w, None, torch.float16)
    assert y.shape == (2, 3, 12) and y.dtype == torch.float16
    assert torch.equal(y[0, 1], torch.zeros(12, dtype=torch.float16))
    norms = y.float().norm(dim=-1)
    norms[0, 1] = 1.0
    assert torch.allclose(norms, torch.ones(2, 3), atol=2e-3)
    b = torch.randn(12)
    expect = F.normalize(x @ w.T + b, dim=-1)
    assert torch.allclose(K.project_normalize(x, w, b), expect, atol=1e-6)
    assert K.project_normalize(x.bfloat16(), w, b).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="Hin"):
        K.project_normalize(x, torch.randn(12, 19), None)
    with pytest.raises(ValueError, match="bias"):
        K.project_normalize(x, w, torch.randn(11))
