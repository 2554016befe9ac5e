"""Throughput of the catalog embedding job per stage, next to bare RDKit baselines.

    python benchmarks/bench_embed.py --n 20000 [--catalog ../shared/data/libraries/moses_test.csv.gz]

Measures on the first N molecules of the catalog, in one run:
  * bare ETKDGv3 (AddHs + EmbedMolecule, fixed seed): the floor of the 3D view, per core;
  * the reference MV-CLAM featurisation: EmbedMolecule(maxAttempts=5000) then MMFF, per core;
  * our views stage in-process (standardise + 2D + 3D views + RDKit properties), per core;
  * the encoder alone in-process (small model, 1 torch thread), molecules/s;
  * the Ray views stage alone with 1 and 2 workers (read -> views, rows counted on the driver): scaling;
  * the whole job (read -> views -> encoder actor -> LanceDB) with its per-stage summary;
and projects the 1.58M-molecule MOSES train set on this machine and on a 64-core node.
The three in-process featurisations run interleaved, `--chunk` molecules at a time in rotating
order, and the views' own ETKDG call is timed, so the views' overhead is measured directly and not
as a difference of runs minutes apart. `--baselines-only` stops after the in-process measurements.
Prints a JSON report (also written to --out).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from rdkit import Chem, rdBase
from rdkit.Chem import AllChem, rdDistGeom

MOSES_TRAIN = 1_584_663


def load_smiles(path: Path, n: int) -> list[str]:
    with gzip.open(path, "rt") if path.suffix == ".gz" else open(path) as handle:
        reader = csv.reader(handle)
        next(reader)
        return [row[0] for _, row in zip(range(n), reader, strict=False)]


def bare_etkdg(smiles: list[str]) -> float:
    params = rdDistGeom.ETKDGv3()
    params.randomSeed = 42
    start = time.perf_counter()
    with rdBase.BlockLogs():
        for s in smiles:
            mol = Chem.AddHs(Chem.MolFromSmiles(s))
            rdDistGeom.EmbedMolecule(mol, params)
    return time.perf_counter() - start


def reference_featurisation(smiles: list[str]) -> float:
    start = time.perf_counter()
    with rdBase.BlockLogs():
        for s in smiles:
            mol = Chem.AddHs(Chem.MolFromSmiles(s))
            if AllChem.EmbedMolecule(mol, maxAttempts=5000, randomSeed=42) == 0:
                AllChem.MMFFOptimizeMolecule(mol)
    return time.perf_counter() - start


# Calls inside the views stage timed separately: (module attribute, report name). ETKDG is the
# floor the stage is compared with; InChIKey and the filter properties are output columns of the
# row rather than views, so the report shows what each costs.
TIMED_CALLS = (
    ("mvclam.engine.views.conformer", "_embed", "etkdg"),
    ("mvclam.engine.views.molecule_views", "inchikey", "inchikey"),
    ("mvclam.engine.views.molecule_views", "molecule_properties", "properties"),
)


def views_in_process(smiles: list[str]) -> tuple[float, dict[str, float], list]:
    """(seconds, seconds inside each of TIMED_CALLS, views of the molecules that succeeded)."""
    import importlib

    from mvclam.engine.views import compute_views_batch

    inside = {name: 0.0 for _, _, name in TIMED_CALLS}
    originals = []

    def timed(function, name):
        def call(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                inside[name] += time.perf_counter() - started

        return call

    for module_name, attribute, name in TIMED_CALLS:
        module = importlib.import_module(module_name)
        originals.append((module, attribute, getattr(module, attribute)))
        setattr(module, attribute, timed(getattr(module, attribute), name))
    try:
        start = time.perf_counter()
        results = compute_views_batch(smiles, with_properties=True)  # what the job's views stage runs
        seconds = time.perf_counter() - start
    finally:
        for module, attribute, original in originals:
            setattr(module, attribute, original)
    return seconds, inside, [r.views for r in results if r.ok]


def interleaved_baselines(smiles: list[str], chunk: int) -> tuple[dict[str, float], list]:
    """Seconds per method over `smiles`, run chunk by chunk in rotating order, so drift of the
    machine's speed over the run (±5-10% seen on this VM) falls on all methods alike."""
    totals = dict.fromkeys(("etkdg", "reference", "views"), 0.0)
    totals.update({f"views_inside_{name}": 0.0 for _, _, name in TIMED_CALLS})
    views: list = []
    for number, start in enumerate(range(0, len(smiles), chunk)):
        part = smiles[start : start + chunk]
        methods = ["etkdg", "reference", "views"]
        for method in methods[number % 3 :] + methods[: number % 3]:
            if method == "etkdg":
                totals["etkdg"] += bare_etkdg(part)
            elif method == "reference":
                totals["reference"] += reference_featurisation(part)
            else:
                seconds, inside, done = views_in_process(part)
                totals["views"] += seconds
                for name, spent in inside.items():
                    totals[f"views_inside_{name}"] += spent
                views.extend(done)
    return totals, views


def encoder_in_process(views: list) -> float:
    import torch

    from mvclam.engine.embedder import MoleculeEmbedder, load_model

    torch.set_num_threads(1)
    torch.manual_seed(0)
    embedder = MoleculeEmbedder(load_model(None, device="cpu"), batch_size=64)
    embedder.embed_views(views[:64])  # warm-up
    start = time.perf_counter()
    embedder.embed_views(views)
    return time.perf_counter() - start


def ray_views_only(catalog: Path, workers: int, batch: int) -> float:
    import ray

    from mvclam.engine.views import ViewConfig
    from mvclam.jobs.embed_io import CatalogDatasource
    from mvclam.jobs.embed_stages import compute_view_rows

    start = time.perf_counter()
    source = CatalogDatasource([str(catalog)], rows_per_block=batch)
    dataset = ray.data.read_datasource(source, num_cpus=0)
    dataset = dataset.repartition(target_num_rows_per_block=batch).map_batches(
        compute_view_rows,
        batch_format="pyarrow",
        batch_size=batch,
        fn_kwargs={"done": None, "view_config": ViewConfig().to_dict()},
        num_cpus=1,
        compute=ray.data.TaskPoolStrategy(size=workers),
    )
    # Whole rows are fetched: a select_columns() here adds a projection that, on 2 cores, cost the
    # second worker most of its gain.
    rows = sum(b.num_rows for b in dataset.iter_batches(batch_size=None, batch_format="pyarrow"))
    assert rows > 0
    return time.perf_counter() - start


def finish(report: dict, out: Path | None) -> int:
    """Prints the JSON report (and writes it to `out`)."""
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        out.write_text(text + "\n")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--catalog", type=Path, default=Path("../shared/data/libraries/moses_test.csv.gz"))
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument(
        "--baseline-n", type=int, default=None, help="molecules for the RDKit baselines (default n)"
    )
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--skip-baselines", action="store_true", help="only the Ray views and job runs")
    parser.add_argument("--baselines-only", action="store_true", help="only the in-process measurements")
    parser.add_argument(
        "--chunk", type=int, default=1000, help="molecules per turn when interleaving the in-process methods"
    )
    args = parser.parse_args()

    smiles = load_smiles(args.catalog, args.n)
    base = smiles[: args.baseline_n or args.n]
    report: dict = {"n": len(smiles), "baseline_n": len(base), "cpus": os.cpu_count()}
    if not args.skip_baselines:
        totals, views = interleaved_baselines(base, args.chunk)
        report["chunk"] = args.chunk
        for name, seconds in totals.items():
            report[f"{name}_ms_per_mol"] = 1000 * seconds / len(base)
        report["views_vs_etkdg"] = report["views_ms_per_mol"] / report["etkdg_ms_per_mol"]
        # The views' work besides their own ETKDG call (standardise, InChIKey, 2D view, properties),
        # and the part of it that is neither InChIKey nor properties (parse, standardise, 2D view).
        report["views_outside_etkdg_ms_per_mol"] = (
            report["views_ms_per_mol"] - report["views_inside_etkdg_ms_per_mol"]
        )
        report["views_rest_ms_per_mol"] = report["views_outside_etkdg_ms_per_mol"] - (
            report["views_inside_inchikey_ms_per_mol"] + report["views_inside_properties_ms_per_mol"]
        )
        report["encoder_ms_per_mol"] = 1000 * encoder_in_process(views) / len(views)
    print(json.dumps(report), file=sys.stderr, flush=True)
    if args.baselines_only:
        return finish(report, args.out)

    import ray

    from mvclam.jobs.embed import load_embed_job, run_embed

    with tempfile.TemporaryDirectory(prefix="bench-embed-") as tmp:
        catalog = Path(tmp, "catalog.smi")
        catalog.write_text("".join(f"{s} m{i}\n" for i, s in enumerate(smiles)))
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        try:
            for workers in (1, 2):
                t = ray_views_only(catalog, workers, args.batch)
                report[f"ray_views_{workers}w_mol_per_s"] = len(smiles) / t
            report["ray_views_scaling"] = report["ray_views_2w_mol_per_s"] / report["ray_views_1w_mol_per_s"]
            job = load_embed_job(
                None,
                inputs=[str(catalog)],
                db=str(Path(tmp, "db")),
                progress=False,
                views_batch_size=args.batch,
            )
            summary = run_embed(job)
        finally:
            ray.shutdown()
    report["job"] = summary.to_dict()
    job_ms = {k: 1000 / v for k, v in summary.rates().items() if v}
    report["job_ms_per_mol"] = job_ms
    # Projection: views and encoding are CPU work (ms per molecule per core); a node with C cores
    # runs them side by side with actors sized to the ratio, so time = N * (views + encoder) / C.
    if args.skip_baselines:
        return finish(report, args.out)
    per_mol_core_ms = report["views_ms_per_mol"] + report["encoder_ms_per_mol"]
    report["projection_moses_train_hours"] = {
        f"{cores}_cores": MOSES_TRAIN * per_mol_core_ms / 1000 / cores / 3600 for cores in (2, 64)
    }
    report["projection_encoder_actors_64_cores"] = round(64 * report["encoder_ms_per_mol"] / per_mol_core_ms)
    return finish(report, args.out)


if __name__ == "__main__":
    sys.exit(main())
