"""``mvclam search`` and ``mvclam index``: thin CLIs over `mvclam.engine.search`.

    mvclam search "a beta-lactam antibiotic" --db catalog_db --table molecules -k 10 \\
        [--where "mw < 500 AND hbd <= 5"] [--smarts "C1C(=O)NC1"] [--rerank] [--exact] [--json]
    mvclam search --smiles "CC(=O)Oc1ccccc1C(=O)O" --db catalog_db --table molecules [--by pooled]
    mvclam index --db catalog_db --table molecules [--index-type auto|none|IVF_SQ|...]
    mvclam serve --db catalog_db --table molecules [--port 8000]       # API + web page (jobs/serve.py)
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from mvclam.jobs.cli_args import add_model_argument

DISPLAY_COLUMNS = ("mw", "logp", "hbd", "hba", "tpsa")


def _format_table(hits: list[dict[str, Any]]) -> str:
    """A fixed-width table for people (a caption, when stored, on the line below its molecule);
    `--json` gives every column for programs."""
    header = ["rank", "score", "id", *DISPLAY_COLUMNS, "smiles"]
    reranked = any(h.get("match_probability") is not None for h in hits)
    if reranked:
        header.insert(2, "match")
    rows = []
    for rank, hit in enumerate(hits, start=1):
        cells = [str(rank), f"{hit['score']:.4f}"]
        if reranked:
            cells.append(f"{hit['match_probability']:.3f}")
        cells.append(str(hit["id"]))
        for column in DISPLAY_COLUMNS:
            value = hit.get(column)
            cells.append("" if value is None else f"{value:.1f}" if isinstance(value, float) else str(value))
        cells.append(str(hit.get("canonical_smiles", "")))
        rows.append(cells)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(header, widths, strict=True)).rstrip()]
    for hit, row in zip(hits, rows, strict=True):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if hit.get("caption"):
            lines.append(" " * (widths[0] + 2) + str(hit["caption"]))
    return "\n".join(lines)


def _index_options(args: argparse.Namespace) -> dict[str, int | str]:
    """Only the options given on the command line: CatalogSearcher owns the defaults."""
    given = {
        "nprobes": args.nprobes,
        "refine_factor": args.refine_factor,
        "resident_device": args.resident_device,
    }
    return {name: value for name, value in given.items() if value is not None}


def _add_index_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--nprobes",
        type=int,
        default=None,
        help="IVF partitions probed per query (default: the searcher's, 20; more when too few match)",
    )
    parser.add_argument(
        "--refine-factor",
        type=int,
        default=None,
        help="LanceDB re-ranks refine_factor x candidates by exact distance first (default: off; the "
        "candidates are always re-scored by exact MaxSim)",
    )
    parser.add_argument(
        "--resident-device",
        default=None,
        help="hold every token of the table on this device (e.g. cuda) and search them all exactly, "
        "instead of the index; for a long-lived service (the copy is made at the first query)",
    )


def _cmd_search(args: argparse.Namespace) -> int:
    from mvclam.engine.search import CatalogSearcher, SearchError

    if bool(args.query) == bool(args.smiles):
        print("give either a query text or --smiles", file=sys.stderr)
        return 2
    try:
        searcher = CatalogSearcher(args.db, args.table, checkpoint=args.model, **_index_options(args))
        if args.query:
            hits = searcher.search_text(
                args.query,
                k=args.k,
                where=args.where,
                smarts=args.smarts,
                exact=args.exact or None,
                rerank=args.rerank,
            )
        else:
            hits = searcher.search_molecule(
                args.smiles,
                k=args.k,
                by=args.by,
                where=args.where,
                smarts=args.smarts,
                exact=args.exact or None,
            )
    except SearchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    results = [h.to_dict() for h in hits]
    if args.json:
        payload = {"query": args.query, "smiles": args.smiles, "k": args.k, "results": results}
        print(json.dumps(payload, default=str))
    elif results:
        print(_format_table(results))
    else:
        print("no results")
    return 0


def _cmd_index(args: argparse.Namespace) -> int:
    from mvclam.engine.search import build_index
    from mvclam.engine.store import open_catalog_table

    table = open_catalog_table(args.db, args.table)
    report = build_index(
        table,
        index_type=args.index_type,
        brute_force_rows=args.brute_force_rows,
        num_partitions=args.num_partitions,
        rebuild=args.rebuild,
    )
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        print(
            f"{args.table}: {report.rows} rows, index {report.index_type or 'none (brute force)'}: "
            f"{report.action} in {report.seconds:.1f} s"
            + (
                f", {report.indexed_rows} rows indexed, {report.unindexed_rows} not yet"
                if report.indexed_rows is not None
                else ""
            )
            + (
                "; compaction deferred (concurrent writers), rows intact"
                if report.compaction_deferred
                else ""
            )
        )
    return 0


# serve() keywords set by `mvclam serve` flags of the same names
SERVE_LIMITS = (
    "max_body_bytes",
    "max_request_atoms",
    "request_embed_timeout_s",
    "molecule_workers",
    "molecule_wait_s",
    "smarts_timeout_s",
)


def _cmd_serve(args: argparse.Namespace) -> int:
    from mvclam.jobs.serve import serve

    limits = {name: getattr(args, name) for name in SERVE_LIMITS}
    serve(
        args.db,
        args.table,
        model=args.model,
        host=args.host,
        port=args.port,
        **limits,
        **_index_options(args),
    )
    return 0


def add_search_subcommands(sub: argparse._SubParsersAction) -> None:
    from mvclam.engine.search import BRUTE_FORCE_ROWS
    from mvclam.engine.search.index import INDEX_TYPES
    from mvclam.jobs.serve import (
        MAX_BODY_BYTES,
        MAX_REQUEST_ATOMS,
        MOLECULE_WAIT_S,
        REQUEST_EMBED_TIMEOUT_S,
        SMARTS_TIMEOUT_S,
    )

    search = sub.add_parser(
        "search", help="search an embedded catalog with a sentence (or similar molecules)"
    )
    search.add_argument("query", nargs="?", default=None, help="natural-language query")
    search.add_argument("--smiles", default=None, help="find molecules similar to this one instead")
    search.add_argument("--db", required=True, help="LanceDB directory or URI")
    search.add_argument("--table", default="molecules")
    add_model_argument(search, "checkpoint (default: the shipped model)")
    search.add_argument("-k", type=int, default=10)
    search.add_argument(
        "--where", default=None, help="SQL predicate on stored columns, e.g. 'mw < 500 AND hbd <= 5'"
    )
    search.add_argument("--smarts", default=None, help="keep only molecules with this substructure")
    search.add_argument(
        "--exact", action="store_true", help="exact MaxSim over every row, even with an index"
    )
    search.add_argument("--rerank", action="store_true", help="re-rank the top 20 with the matching head")
    search.add_argument(
        "--by", choices=("tokens", "pooled"), default="tokens", help="similarity for --smiles"
    )
    search.add_argument("--json", action="store_true", help="JSON output with every stored column")
    _add_index_options(search)
    search.set_defaults(handler=_cmd_search)

    index = sub.add_parser("index", help="build or refresh the ANN index of a catalog table")
    index.add_argument("--db", required=True)
    index.add_argument("--table", default="molecules")
    index.add_argument("--index-type", default="auto", choices=("auto", "none", *INDEX_TYPES))
    index.add_argument(
        "--brute-force-rows", type=int, default=BRUTE_FORCE_ROWS, help="no index below this size"
    )
    index.add_argument("--num-partitions", type=int, default=None)
    index.add_argument(
        "--rebuild", action="store_true", help="rebuild instead of refreshing an existing index"
    )
    index.add_argument("--json", action="store_true")
    index.set_defaults(handler=_cmd_index)

    serve = sub.add_parser("serve", help="serve the search API and web page for one catalog table")
    serve.add_argument("--db", required=True)
    serve.add_argument("--table", default="molecules")
    add_model_argument(serve, "checkpoint (default: the shipped model)")
    serve.add_argument("--host", default="127.0.0.1", help="bind address (127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--max-body-bytes", type=int, default=MAX_BODY_BYTES, help="larger request bodies get 413"
    )
    serve.add_argument(
        "--max-request-atoms",
        type=int,
        default=MAX_REQUEST_ATOMS,
        help="heavy-atom limit of a molecule sent by a client (its 3D view is computed per request)",
    )
    serve.add_argument(
        "--request-embed-timeout",
        type=int,
        default=REQUEST_EMBED_TIMEOUT_S,
        dest="request_embed_timeout_s",
        metavar="SECONDS",
        help="ETKDG time limit for a client molecule",
    )
    serve.add_argument(
        "--molecule-workers", type=int, default=1, help="client molecules embedded at the same time"
    )
    serve.add_argument(
        "--molecule-wait",
        type=float,
        default=MOLECULE_WAIT_S,
        dest="molecule_wait_s",
        metavar="SECONDS",
        help="how long a molecule request waits for a worker before 429 (Retry-After)",
    )
    serve.add_argument(
        "--smarts-timeout",
        type=float,
        default=SMARTS_TIMEOUT_S,
        dest="smarts_timeout_s",
        metavar="SECONDS",
        help="SMARTS matching time per request (in a worker process, killed at the limit) before 408",
    )
    _add_index_options(serve)
    serve.set_defaults(handler=_cmd_serve)
