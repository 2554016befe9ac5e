#!/usr/bin/env python
"""GPU benchmark of the fused Triton kernels in ``mvclam.kernels`` against their torch references.

Usage (on a CUDA machine with triton installed):
    python benchmarks/bench_kernels.py [--json results.json] [--maxsim-m 100000] ...

It first measures two ceilings on the device - device-to-device copy bandwidth and dense matmul
FLOP/s (float16, float32 with and without tf32) - then times each kernel and its reference at
realistic sizes and reports time, achieved bandwidth / FLOP/s as a fraction of the measured
ceilings, peak extra memory, and the max error against the reference. Finally it checks the
project's goals: MaxSim >= 70% of copy bandwidth; pair-distance bias >= 3x faster than the unfused
reference at N = 128 atoms with a fraction of its peak memory.

Without CUDA it exits with status 2 and a message, unless ``--cpu-smoke`` is given: that runs
the same code path with tiny shapes through Triton's CPU interpreter, only to exercise the
script's logic (its timings mean nothing).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field


@dataclass
class Row:
    bench: str
    impl: str
    ms: float
    metric: str = ""
    value: float = float("nan")
    pct_ceiling: float = float("nan")
    peak_mib: float = float("nan")
    max_err: float = float("nan")
    note: str = ""


@dataclass
class Report:
    device: str
    ceilings: dict[str, float] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    goals: list[dict] = field(default_factory=list)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on CPU via TRITON_INTERPRET")
    p.add_argument("--json", type=str, default=None, help="also write the results as JSON here")
    p.add_argument("--maxsim-m", type=int, default=100_000, help="molecules in the MaxSim table")
    p.add_argument("--maxsim-q", type=int, default=64, help="tokens per molecule (2K)")
    p.add_argument("--maxsim-t", type=int, nargs="+", default=[1, 16, 64], help="text batch sizes")
    p.add_argument("--topk", type=int, default=10)
    p.add_argument("--dim", type=int, default=256, help="token embedding width D")
    p.add_argument("--attn-batch", type=int, default=256, help="molecules per batch (G = 2 x this)")
    p.add_argument("--attn-n", type=int, default=64, help="atom tokens per view (padded)")
    p.add_argument("--pair-b", type=int, default=32)
    p.add_argument("--pair-n", type=int, default=128)
    p.add_argument("--proj-rows", type=int, default=16384, help="rows = molecules x 2K tokens")
    p.add_argument("--proj-hin", type=int, default=768)
    return p.parse_args(argv)


class Bench:
    def __init__(self, device: str) -> None:
        import torch

        self.torch = torch
        self.device = device
        self.cuda = device == "cuda"

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def time_ms(self, fn: Callable[[], object]) -> float:
        """Median time of ``fn`` in ms (triton.testing.do_bench on GPU; a few calls on CPU)."""
        if self.cuda:
            from triton.testing import do_bench

            return float(do_bench(fn, warmup=25, rep=200, return_mode="median"))
        fn()
        ts = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(ts)

    def peak_mib(self, fn: Callable[[], object]) -> float:
        """Extra device memory (MiB) at peak while ``fn`` runs, output included."""
        if not self.cuda:
            return float("nan")
        torch = self.torch
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        del out
        return peak / 2**20


def measure_ceilings(b: Bench, smoke: bool) -> dict[str, float]:
    torch = b.torch
    nbytes = (1 << 20) if smoke else (2 << 30)
    src = torch.empty(nbytes, dtype=torch.uint8, device=b.device)
    dst = torch.empty_like(src)
    ms = b.time_ms(lambda src=src, dst=dst: dst.copy_(src))
    out = {"copy_GBps": 2 * nbytes / ms / 1e6}  # read + write
    del src, dst
    n = 128 if smoke else 8192
    for name, dtype, tf32 in (
        ("matmul_fp16_TFLOPs", torch.float16, False),
        ("matmul_fp32_TFLOPs", torch.float32, False),
        ("matmul_tf32_TFLOPs", torch.float32, True),
    ):
        if b.device == "cpu" and dtype == torch.float16:
            continue
        a = torch.randn(n, n, device=b.device, dtype=dtype)
        c = torch.randn(n, n, device=b.device, dtype=dtype)
        prev = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            ms = b.time_ms(lambda a=a, c=c: a @ c)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = prev
        out[name] = 2 * n**3 / ms / 1e9
        del a, c
    return out


def _err(a, e) -> float:
    a, e = a.float(), e.float()
    fin = e.isfinite()
    if not (a.isfinite() == fin).all():
        return float("inf")
    return float((a[fin] - e[fin]).abs().max()) if fin.any() else 0.0


def _argmax_tie_gap(queries, tokens, mask, best, ref_best) -> tuple[int, float]:
    """(pairs whose arg-max token differs from the reference's, the largest similarity gap between
    the two tokens at those pairs). Near-equal tokens can swap under another summation order (the
    GPU's tensor-core dot): a gap at rounding level is a tie, a larger one a wrong arg-max."""
    t_idx, m_idx = (best != ref_best).nonzero(as_tuple=True)
    if len(t_idx) == 0:
        return 0, 0.0
    q = queries[t_idx].float()
    sims = (tokens[m_idx].float() * q[:, None, :]).sum(-1)  # (pairs, Q), float32
    pick = lambda index: sims.gather(1, index[t_idx, m_idx].clamp(min=0)[:, None])[:, 0]  # noqa: E731
    valid = mask[m_idx].gather(1, best[t_idx, m_idx].clamp(min=0)[:, None])[:, 0]
    gap = (pick(ref_best) - pick(best)).abs().masked_fill(~valid, float("inf"))
    return len(t_idx), float(gap.max())


def bench_maxsim(b: Bench, args: argparse.Namespace, rep: Report, smoke: bool) -> None:
    torch, F = b.torch, b.torch.nn.functional
    from mvclam.kernels.maxsim import maxsim_reference, maxsim_topk_reference
    from mvclam.kernels.triton_maxsim import maxsim_topk_triton, maxsim_triton

    m, q, d = (37, 9, 32) if smoke else (args.maxsim_m, args.maxsim_q, args.dim)
    ts = [1, 5] if smoke else args.maxsim_t
    tokens = torch.empty(m, q, d, device=b.device, dtype=torch.float16)
    for s in range(0, m, 8192):  # normalise in chunks: no float32 copy of the whole table
        chunk = torch.randn(min(8192, m - s), q, d, device=b.device)
        tokens[s : s + 8192] = F.normalize(chunk, dim=-1).half()
    lengths = torch.randint(q // 2, q + 1, (m,), device=b.device)
    mask = torch.arange(q, device=b.device)[None, :] < lengths[:, None]
    bw = rep.ceilings["copy_GBps"]
    for t in ts:
        queries = F.normalize(torch.randn(t, d, device=b.device), dim=-1).half()
        out_bytes = t * m * 4
        moved = tokens.numel() * 2 + mask.numel() + queries.numel() * 2 + out_bytes
        ref_s, ref_b = maxsim_reference(queries, tokens, mask)
        cases = {
            "torch reference": lambda queries=queries: maxsim_reference(queries, tokens, mask),
            "triton scores": lambda queries=queries: maxsim_triton(
                queries, tokens, mask, return_argmax=False
            ),
            "triton scores+argmax": lambda queries=queries: maxsim_triton(queries, tokens, mask),
        }
        for impl, fn in cases.items():
            ms = b.time_ms(fn)
            res = fn()
            err, note = _err(res[0], ref_s), ""
            if impl == "triton scores+argmax" and not torch.equal(res[1], ref_b):
                swapped, gap = _argmax_tie_gap(queries, tokens, mask, res[1], ref_b)
                note = f"{swapped} arg-max ties swapped (max gap {gap:.1e})"
                if gap > 1e-5:
                    err = float("inf")
            extra = t * m * 8 if "argmax" in impl or "reference" in impl else 0
            gbps = (moved + extra) / ms / 1e6
            rep.rows.append(
                Row(f"maxsim T={t} M={m} Q={q} D={d} fp16", impl, ms, "GB/s", gbps, 100 * gbps / bw,
                    b.peak_mib(fn), err, note)
            )  # fmt: skip
        k = min(args.topk, m)
        ref_top = maxsim_topk_reference(queries, tokens, mask, k=k)
        for impl, fn in {
            "torch reference top-k": lambda queries=queries, k=k: maxsim_topk_reference(
                queries, tokens, mask, k=k
            ),
            "triton top-k": lambda queries=queries, k=k: maxsim_topk_triton(queries, tokens, mask, k=k),
        }.items():
            ms = b.time_ms(fn)
            res = fn()
            err = _err(res[0], ref_top[0]) if torch.equal(res[1], ref_top[1]) else float("inf")
            gbps = (moved - out_bytes) / ms / 1e6
            rep.rows.append(
                Row(
                    f"maxsim top-{k} T={t} M={m}",
                    impl,
                    ms,
                    "GB/s",
                    gbps,
                    100 * gbps / bw,
                    b.peak_mib(fn),
                    err,
                )
            )
    # goal: the best scores-only bandwidth at a search-sized text batch (T <= 32)
    cands = [
        r for r in rep.rows
        if r.impl == "triton scores" and r.bench.startswith("maxsim T=") and int(r.bench.split()[1][2:]) <= 32
    ]  # fmt: skip
    if cands:
        best = max(cands, key=lambda r: r.pct_ceiling)
        rep.goals.append(
            {"goal": "MaxSim >= 70% of measured copy bandwidth", "where": best.bench,
             "value": f"{best.pct_ceiling:.1f}%", "met": None if smoke else bool(best.pct_ceiling >= 70.0)}
        )  # fmt: skip


def bench_cross_attention(b: Bench, args: argparse.Namespace, rep: Report, smoke: bool) -> None:
    torch, F = b.torch, b.torch.nn.functional
    from mvclam.kernels.cross_attention import query_cross_attention_reference
    from mvclam.kernels.triton_cross_attention import query_cross_attention_triton

    g, h, kq, n, dh = (4, 2, 8, 23, 16) if smoke else (2 * args.attn_batch, 12, 32, args.attn_n, 64)
    dtype = torch.float32 if smoke else torch.bfloat16
    q = torch.randn(g, h, kq, dh, device=b.device, dtype=dtype)
    k = torch.randn(g, h, n, dh, device=b.device, dtype=dtype)
    v = torch.randn(g, h, n, dh, device=b.device, dtype=dtype)
    lengths = torch.randint(max(1, n // 3), n + 1, (g,), device=b.device)  # no fully padded group
    mask = torch.arange(n, device=b.device)[None, :] < lengths[:, None]
    flops = 4 * g * h * kq * n * dh
    moved = (q.numel() * 2 + k.numel() + v.numel()) * q.element_size() + mask.numel()
    ref = query_cross_attention_reference(q, k, v, mask)
    attn_mask = mask[:, None, None, :]
    cases = {
        "torch reference": lambda: query_cross_attention_reference(q, k, v, mask),
        "torch SDPA": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask),
        "triton": lambda: query_cross_attention_triton(q, k, v, mask),
    }
    key = "matmul_fp16_TFLOPs" if "matmul_fp16_TFLOPs" in rep.ceilings else "matmul_fp32_TFLOPs"
    for impl, fn in cases.items():
        ms = b.time_ms(fn)
        tflops = flops / ms / 1e9
        rep.rows.append(
            Row(f"cross-attn G={g} H={h} K={kq} N={n} dh={dh} {str(dtype)[6:]}", impl, ms, "TFLOP/s", tflops,
                100 * tflops / rep.ceilings[key], b.peak_mib(fn), _err(fn(), ref),
                f"{moved / ms / 1e6:.0f} GB/s")
        )  # fmt: skip


def _pair_args(b: Bench, bsz: int, n: int, n_types: int, kg: int, kh: int, h: int):
    torch = b.torch
    dev = b.device
    lengths = torch.randint(n // 2, n + 1, (bsz,), device=dev)
    mask = torch.arange(n, device=dev)[None, :] < lengths[:, None]
    return (
        torch.randn(bsz, n, 3, device=dev) * 3.0,
        torch.randint(0, n_types, (bsz, n), device=dev),
        mask,
        torch.rand(n_types * n_types, device=dev) + 0.5,
        torch.randn(n_types * n_types, device=dev) * 0.1,
        torch.rand(kg, device=dev) * 3.0,
        torch.rand(kg, device=dev) + 0.2,
        torch.randn(kh, kg, device=dev) / math.sqrt(kg),
        torch.randn(kh, device=dev) * 0.1,
        torch.randn(h, kh, device=dev) / math.sqrt(kh),
        torch.randn(h, device=dev) * 0.1,
    )


def bench_pair_bias(b: Bench, args: argparse.Namespace, rep: Report, smoke: bool) -> None:
    from mvclam.kernels.pair_bias import gaussian_pair_bias_reference
    from mvclam.kernels.triton_pair_bias import gaussian_pair_bias_triton

    # Uni-Mol: 30 atom types (T*T pair table), K = 128 Gaussians, Kh = K, H = 64 heads
    bsz, n, kg, kh, h = (2, 13, 16, 16, 4) if smoke else (args.pair_b, args.pair_n, 128, 128, 64)
    pa = _pair_args(b, bsz, n, 30, kg, kh, h)
    ref = gaussian_pair_bias_reference(*pa)
    flops = 2 * bsz * n * n * (kg * kh + kh * h)
    out_bytes = bsz * h * n * n * 4
    precisions = ["ieee"] if b.device == "cpu" else ["tf32x3", "ieee", "tf32"]
    cases = {"torch reference": lambda: gaussian_pair_bias_reference(*pa)}
    for prec in precisions:
        cases[f"triton {prec}"] = lambda prec=prec: gaussian_pair_bias_triton(*pa, precision=prec)
    ref_ms = ref_mem = float("nan")
    for impl, fn in cases.items():
        ms = b.time_ms(fn)
        mem = b.peak_mib(fn)
        if impl == "torch reference":
            ref_ms, ref_mem = ms, mem
        rep.rows.append(
            Row(f"pair-bias B={bsz} N={n} K={kg} Kh={kh} H={h}", impl, ms, "TFLOP/s", flops / ms / 1e9,
                100 * flops / ms / 1e9 / rep.ceilings["matmul_fp32_TFLOPs"], mem, _err(fn(), ref),
                f"x{ref_ms / ms:.2f} vs ref; out {out_bytes / ms / 1e6:.0f} GB/s")
        )  # fmt: skip
    default = next(r for r in rep.rows if r.impl == f"triton {precisions[0]}" and r.bench.startswith("pair"))
    speedup = ref_ms / default.ms
    rep.goals.append(
        {"goal": "pair bias >= 3x faster than the torch reference at N = 128", "where": default.bench,
         "value": f"x{speedup:.2f} ({default.impl})", "met": None if smoke else bool(n == 128 and speedup >= 3.0)}
    )  # fmt: skip
    rep.goals.append(
        {"goal": "pair bias peak memory a fraction of the reference's", "where": default.bench,
         "value": f"{default.peak_mib:.0f} MiB vs {ref_mem:.0f} MiB",
         "met": bool(default.peak_mib < ref_mem) if b.cuda else None}
    )  # fmt: skip


def bench_projection(b: Bench, args: argparse.Namespace, rep: Report, smoke: bool) -> None:
    torch, F = b.torch, b.torch.nn.functional
    from mvclam.kernels.projection import project_normalize_reference
    from mvclam.kernels.triton_projection import project_normalize_triton

    r, hin, d = (37, 40, 24) if smoke else (args.proj_rows, args.proj_hin, args.dim)
    dtype = torch.float32 if smoke else torch.bfloat16
    x = torch.randn(r, hin, device=b.device, dtype=dtype)
    w = (torch.randn(d, hin, device=b.device) / math.sqrt(hin)).to(dtype)
    bias = (torch.randn(d, device=b.device) * 0.1).to(dtype)
    ref = project_normalize_reference(x, w, bias, torch.float16)
    flops = 2 * r * hin * d
    cases = {
        "torch reference (fp32 math)": lambda: project_normalize_reference(x, w, bias, torch.float16),
        "torch native dtype": lambda: F.normalize(F.linear(x, w, bias).float(), dim=-1).half(),
        "triton": lambda: project_normalize_triton(x, w, bias, torch.float16),
    }
    key = "matmul_fp16_TFLOPs" if "matmul_fp16_TFLOPs" in rep.ceilings else "matmul_fp32_TFLOPs"
    moved = (x.numel() + w.numel()) * x.element_size() + r * d * 2
    for impl, fn in cases.items():
        ms = b.time_ms(fn)
        rep.rows.append(
            Row(f"projection R={r} Hin={hin} D={d} {str(dtype)[6:]}->fp16", impl, ms, "TFLOP/s",
                flops / ms / 1e9, 100 * flops / ms / 1e9 / rep.ceilings[key], b.peak_mib(fn),
                _err(fn(), ref), f"{moved / ms / 1e6:.0f} GB/s")
        )  # fmt: skip


def render(rep: Report) -> str:
    lines = [f"device: {rep.device}", "", "ceilings:"]
    lines += [f"  {k}: {v:.1f}" for k, v in rep.ceilings.items()]
    lines += ["", "| bench | impl | ms | metric | % ceiling | peak MiB | max err | note |", "|---" * 8 + "|"]
    for r in rep.rows:
        lines.append(
            f"| {r.bench} | {r.impl} | {r.ms:.4f} | {r.value:.2f} {r.metric} | {r.pct_ceiling:.1f} | "
            f"{r.peak_mib:.1f} | {r.max_err:.2e} | {r.note} |"
        )
    lines += ["", "goals:"]
    for g in rep.goals:
        met = {True: "MET", False: "NOT MET", None: "n/a"}[g["met"]]
        lines.append(f"  [{met}] {g['goal']}: {g['value']} ({g['where']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.cpu_smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the kernel-module imports
    import torch

    if not torch.cuda.is_available() and not args.cpu_smoke:
        print(
            "bench_kernels: no CUDA device available - the Triton kernels are benchmarked on a GPU only "
            "(use --cpu-smoke to exercise this script with tiny shapes in Triton's CPU interpreter).",
            file=sys.stderr,
        )
        return 2
    try:
        import triton  # noqa: F401
    except ImportError:
        print("bench_kernels: the 'triton' package is not installed", file=sys.stderr)
        return 2
    smoke = args.cpu_smoke
    device = "cpu" if smoke else "cuda"
    b = Bench(device)
    name = (
        "CPU (Triton interpreter smoke run; timings meaningless)" if smoke else torch.cuda.get_device_name()
    )
    rep = Report(device=name)
    torch.manual_seed(0)
    rep.ceilings = measure_ceilings(b, smoke)
    with torch.no_grad():
        for fn in (bench_maxsim, bench_cross_attention, bench_pair_bias, bench_projection):
            fn(b, args, rep, smoke)
            b.sync()
    print(render(rep))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": rep.device, "ceilings": rep.ceilings,
                       "rows": [asdict(r) for r in rep.rows], "goals": rep.goals}, f, indent=2)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
