"""Item 4, HTTP: bounded load and hostile requests against `mvclam serve` on loopback.

    python benchmarks/reliability/rel_http.py --workdir /tmp/rel-http --clients 32 --seconds 60 \
        [--molecules 300] [--model tiny|shipped|DIR] [--out http.json]

Embeds a small catalog (the sample molecules and one large polycyclic aromatic sheet, on which a
pathological SMARTS is slow), starts `mvclam serve` as a child process and measures:

* load: `--clients` keep-alive clients for `--seconds` (text search with random k and filters,
  similar-molecule search, health): requests, 5xx (must be 0), other non-2xx, p50/p95 latency,
  the server's memory before and after;
* hostile requests (`HOSTILE`): malformed JSON and wrong types, k <= 0 and huge k, 1 MB texts and
  oversized or chunked bodies, unknown filter columns and operators, SQL-looking values, invalid and
  pathological SMILES and SMARTS, deeply nested JSON, unknown paths and methods: each must get a 4xx
  with a short JSON `{"detail": ...}` without a traceback or an internal path;
* slow requests: many concurrent molecule requests whose 3D view is slow (the server's molecule
  slots fill up), many half-sent requests (slow-loris sockets), and a SMARTS whose matching is
  exponential on the sheet molecule: how long each takes, what status it gets, how long a plain
  search waits meanwhile, and that the server is still up.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import socket
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from rel_common import (
    free_port,
    internal_leak,
    kill_child_tree,
    mvclam_command,
    percentile,
    resolve_model,
    rss_mb,
    start_child,
    write_catalog,
    write_report,
)

QUERIES = [
    "an aromatic carboxylic acid",
    "a steroid hormone",
    "a basic amine drug",
    "sulfonamide",
    "a beta-lactam",
]
SMILES = [
    "CC(=O)Oc1ccccc1C(=O)O",
    "CCO",
    "c1ccccc1",
    "CN1C=NC2=C1C(=O)N(C(=O)N2C)C",
    "CC(C)Cc1ccc(cc1)C(C)C(=O)O",
]


def hex_sheet_smiles(rows: int = 5, cols: int = 5) -> str:
    """A fused polycyclic aromatic sheet (5 x 5 hexagons: 70 atoms). A chain SMARTS that cannot
    match (`*~*~…~[U]`) makes RDKit enumerate the sheet's paths: seconds to minutes."""
    from rdkit import Chem

    mol = Chem.RWMol()
    atoms: dict[tuple[int, int], int] = {}

    def atom(key: tuple[int, int]) -> int:
        if key not in atoms:
            a = Chem.Atom(6)
            a.SetIsAromatic(True)
            atoms[key] = mol.AddAtom(a)
        return atoms[key]

    for r in range(rows):
        for c in range(cols):
            x = 2 * c + (r % 2)
            ring = [
                atom(p) for p in ((x, r), (x + 1, r), (x + 2, r), (x + 2, r + 1), (x + 1, r + 1), (x, r + 1))
            ]
            for a, b in zip(ring, ring[1:] + ring[:1], strict=True):
                if mol.GetBondBetweenAtoms(a, b) is None:
                    mol.AddBond(a, b, Chem.BondType.AROMATIC)
    result = mol.GetMol()
    Chem.SanitizeMol(result)
    return Chem.MolToSmiles(result)


def pathological_smarts(length: int = 30) -> str:
    return "*" + "~*" * length + "~[U]"


def nested_smiles(atoms: int) -> str:
    smiles = "C"
    for _ in range(atoms - 1):
        smiles = f"C({smiles})"
    return smiles


# --- the catalog and the server ---------------------------------------------------------------


def build_catalog(workdir: Path, molecules: int, model: str | None) -> Path:
    """A table of `molecules` sample molecules plus the sheet molecule, embedded in-process."""
    import csv

    from rel_common import ray_session

    from mvclam.jobs.embed import load_embed_job, run_embed

    db = workdir / "db"
    if (db / "molecules.lance").exists():
        return db
    catalog = write_catalog(workdir / "catalog.csv", molecules)
    with open(catalog, "a", newline="") as handle:
        csv.writer(handle).writerow(["sheet-5x5", hex_sheet_smiles()])
    owns = ray_session()
    try:
        run_embed(load_embed_job(None, inputs=[str(catalog)], db=str(db), model=model, progress=False))
    finally:
        if owns:
            import ray

            ray.shutdown()
    return db


class Server:
    """`mvclam serve` as a child process on a free loopback port."""

    def __init__(self, workdir: Path, db: Path, model: str | None, *options: str):
        self.port = free_port()
        args = ["serve", "--db", str(db), "--table", "molecules", "--port", str(self.port), *options]
        if model:
            args += ["--model", model]
        self.child = start_child(mvclam_command(*args), workdir / "logs" / f"serve-{self.port}.log")
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.child.popen.poll() is not None:
                raise RuntimeError(f"mvclam serve exited: {self.child.output()[-2000:]}")
            try:
                if request(self.port, "GET", "/health", timeout=5)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError("mvclam serve did not start")

    def alive(self) -> bool:
        try:
            return (
                self.child.popen.poll() is None and request(self.port, "GET", "/health", timeout=30)[0] == 200
            )
        except OSError:
            return False

    def stop(self) -> None:
        kill_child_tree(self.child)


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 60,
    connection: http.client.HTTPConnection | None = None,
) -> tuple[int, dict[str, str], bytes]:
    own = connection is None
    conn = connection or http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        if own:
            conn.close()


# --- load -------------------------------------------------------------------------------------


def _random_request(rng: random.Random) -> tuple[str, str, bytes | None]:
    roll = rng.random()
    if roll < 0.6:
        body: dict[str, Any] = {
            "query": rng.choice(QUERIES),
            "k": rng.randint(1, 100),
            "depict": rng.random() < 0.2,
        }
        if rng.random() < 0.4:
            body["filters"] = [
                {"column": "mw", "op": rng.choice(["<", ">="]), "value": rng.uniform(100, 500)}
            ]
        if rng.random() < 0.1:
            body["smarts"] = rng.choice(["C(=O)O", "c1ccccc1", "[#7]"])
        return "POST", "/api/search", json.dumps(body).encode()
    if roll < 0.8:
        body = {"smiles": rng.choice(SMILES), "k": rng.randint(1, 20), "by": rng.choice(["tokens", "pooled"])}
        return "POST", "/api/similar", json.dumps(body).encode()
    if roll < 0.9:
        return "GET", "/health", None
    return "POST", "/api/search", json.dumps({"query": "acid", "k": rng.choice([0, 101, -5])}).encode()


def load(port: int, pid: int, clients: int, seconds: float, seed: int = 0) -> dict[str, Any]:
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while time.monotonic() < stop:
            method, path, body = _random_request(rng)
            started = time.perf_counter()
            try:
                status, _, _ = request(port, method, path, body, connection=conn)
            except (OSError, http.client.HTTPException) as error:
                with lock:
                    failures.append(f"{type(error).__name__}: {error}"[:200])
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                continue
            elapsed = time.perf_counter() - started
            with lock:
                statuses[status] += 1
                if status == 200:
                    latencies.append(elapsed)
        conn.close()

    rss_before = rss_mb(pid)
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    total = sum(statuses.values())
    return {
        "clients": clients,
        "seconds": round(wall, 1),
        "requests": total,
        "requests_per_s": round(total / wall, 1) if wall else 0.0,
        "status_counts": {str(k): v for k, v in sorted(statuses.items())},
        "5xx": sum(v for k, v in statuses.items() if k >= 500),
        "connection_errors": len(failures),
        "connection_error_examples": failures[:3],
        "p50_ms": round(1000 * percentile(latencies, 50), 1),
        "p95_ms": round(1000 * percentile(latencies, 95), 1),
        "rss_before_mb": round(rss_before, 1),
        "rss_after_mb": round(rss_mb(pid), 1),
    }


# --- hostile requests -------------------------------------------------------------------------


def _j(value: Any) -> bytes:
    return json.dumps(value).encode()


def hostile_requests() -> list[tuple[str, str, str, bytes | None, dict[str, str]]]:
    """(name, method, path, body, headers): every one must get a 4xx with a short JSON error."""
    q = "an aromatic acid"

    def filters(*f: tuple[Any, ...]) -> bytes:
        return _j({"query": q, "filters": [dict(zip(("column", "op", "value"), x, strict=True)) for x in f]})

    cases: list[tuple[str, str, str, bytes | None, dict[str, str]]] = [
        ("malformed json", "POST", "/api/search", b"{not json", {}),
        ("truncated json", "POST", "/api/search", b'{"query": "acid", "k": ', {}),
        ("empty body", "POST", "/api/search", b"", {}),
        ("json null", "POST", "/api/search", b"null", {}),
        ("json list", "POST", "/api/search", b'["acid"]', {}),
        ("json string", "POST", "/api/search", b'"acid"', {}),
        ("invalid utf-8 body", "POST", "/api/search", b'{"query": "\xff\xfe"}', {}),
        ("lone surrogate", "POST", "/api/search", b'{"query": "\\ud800"}', {}),
        ("NaN k", "POST", "/api/search", b'{"query": "acid", "k": NaN}', {}),
        (
            "deeply nested json",
            "POST",
            "/api/search",
            b'{"query": "acid", "k": ' + b"[" * 20000 + b"]" * 20000 + b"}",
            {},
        ),
        ("deeply nested array body", "POST", "/api/search", b"[" * 30000 + b"]" * 30000, {}),
        ("duplicate keys", "POST", "/api/search", b'{"query": "acid", "query": 5}', {}),
        ("query wrong type", "POST", "/api/search", _j({"query": 5}), {}),
        ("query object", "POST", "/api/search", _j({"query": {"$ne": ""}}), {}),
        ("missing query", "POST", "/api/search", _j({"k": 5}), {}),
        ("k string", "POST", "/api/search", _j({"query": q, "k": "5"}), {}),
        ("k float", "POST", "/api/search", _j({"query": q, "k": 5.5}), {}),
        ("k bool", "POST", "/api/search", _j({"query": q, "k": True}), {}),
        ("k zero", "POST", "/api/search", _j({"query": q, "k": 0}), {}),
        ("k negative", "POST", "/api/search", _j({"query": q, "k": -1}), {}),
        ("k huge", "POST", "/api/search", _j({"query": q, "k": 10**12}), {}),
        ("k bignum", "POST", "/api/search", b'{"query": "acid", "k": 1' + b"0" * 4000 + b"}", {}),
        ("k 1e400", "POST", "/api/search", b'{"query": "acid", "k": 1e400}', {}),
        ("empty query", "POST", "/api/search", _j({"query": ""}), {}),
        ("whitespace query", "POST", "/api/search", _j({"query": "   "}), {}),
        ("long query", "POST", "/api/search", _j({"query": "x" * 501}), {}),
        ("1 MB text", "POST", "/api/search", _j({"query": "x" * 1_000_000}), {}),
        ("10 MB body", "POST", "/api/search", b" " * 10_000_000 + b"{}", {}),
        ("huge declared length", "POST", "/api/search", b"{}", {"Content-Length": str(10**12)}),
        ("filters not a list", "POST", "/api/search", _j({"query": q, "filters": {"mw": 1}}), {}),
        ("filter unknown column", "POST", "/api/search", filters(("id", "=", 1)), {}),
        ("filter tokens column", "POST", "/api/search", filters(("tokens", "<", 1)), {}),
        ("filter model_version", "POST", "/api/search", filters(("model_version", "=", 1)), {}),
        ("filter sql column", "POST", "/api/search", filters(("mw; DROP TABLE molecules", "<", 1)), {}),
        ("filter operator LIKE", "POST", "/api/search", filters(("mw", "LIKE", 1)), {}),
        ("filter operator !=", "POST", "/api/search", filters(("mw", "!=", 1)), {}),
        ("filter operator OR", "POST", "/api/search", filters(("mw", "< 1 OR 1=1 --", 1)), {}),
        ("filter sql value", "POST", "/api/search", filters(("mw", "<", "1 OR 1=1")), {}),
        ("filter string value", "POST", "/api/search", filters(("mw", "<", "400")), {}),
        ("filter huge value", "POST", "/api/search", filters(("mw", "<", 1e308)), {}),
        ("filter null value", "POST", "/api/search", filters(("mw", "<", None)), {}),
        ("too many filters", "POST", "/api/search", filters(*[("mw", "<", 500)] * 50), {}),
        ("invalid smarts", "POST", "/api/search", _j({"query": q, "smarts": "C("}), {}),
        ("smarts garbage", "POST", "/api/search", _j({"query": q, "smarts": "[[[[[[]]]]]]$$$$"}), {}),
        ("smarts too long", "POST", "/api/search", _j({"query": q, "smarts": "C" * 201}), {}),
        ("rerank string", "POST", "/api/search", _j({"query": q, "rerank": "yes"}), {}),
        ("similar invalid smiles", "POST", "/api/similar", _j({"smiles": "C1CC(("}), {}),
        ("similar garbage smiles", "POST", "/api/similar", _j({"smiles": "\x00\x01\x02"}), {}),
        ("similar unknown element", "POST", "/api/similar", _j({"smiles": "[Xx]C"}), {}),
        ("similar metal", "POST", "/api/similar", _j({"smiles": "[Pt](N)(N)(Cl)Cl"}), {}),
        ("similar empty", "POST", "/api/similar", _j({"smiles": ""}), {}),
        ("similar too long", "POST", "/api/similar", _j({"smiles": "C" * 501}), {}),
        ("similar too many atoms", "POST", "/api/similar", _j({"smiles": nested_smiles(151)}), {}),
        ("similar 400-atom chain", "POST", "/api/similar", _j({"smiles": "C" * 400}), {}),
        ("similar wildcard", "POST", "/api/similar", _j({"smiles": "*C*"}), {}),
        ("similar by unknown", "POST", "/api/similar", _j({"smiles": "CCO", "by": "morgan"}), {}),
        ("similar smiles list", "POST", "/api/similar", _j({"smiles": ["CCO"]}), {}),
        ("similar invalid smarts", "POST", "/api/similar", _j({"smiles": "CCO", "smarts": "C("}), {}),
        ("unknown path", "GET", "/api/../../etc/passwd", None, {}),
        ("traversal path", "GET", "/%2e%2e/%2e%2e/etc/passwd", None, {}),
        ("unknown api", "POST", "/api/admin", _j({}), {}),
        ("wrong method", "GET", "/api/search", None, {}),
        ("wrong method delete", "DELETE", "/api/search", None, {}),
        ("embeddings route", "POST", "/api/embed", _j({"prompt_embeds": [[0.0]]}), {}),
        (
            "form body",
            "POST",
            "/api/search",
            b"query=acid",
            {"Content-Type": "application/x-www-form-urlencoded"},
        ),
        ("text body", "POST", "/api/search", b"acid", {"Content-Type": "text/plain"}),
    ]
    return cases


def accepted_requests() -> list[tuple[str, str, str, bytes | None, dict[str, str]]]:
    """Odd but valid requests: answered (2xx or 4xx, never 5xx). Unknown JSON keys are ignored, so
    an embeddings or SQL field a client adds is never read."""
    q = "an aromatic acid"
    return [
        (
            "filter extra key",
            "POST",
            "/api/search",
            _j({"query": q, "filters": [{"column": "mw", "op": "<", "value": 1, "sql": "1=1"}]}),
            {},
        ),
        ("prompt_embeds field", "POST", "/api/search", _j({"query": q, "prompt_embeds": [[0.0] * 4]}), {}),
        ("where field", "POST", "/api/search", _j({"query": q, "where": "1=1; DROP TABLE molecules"}), {}),
        ("db and table fields", "POST", "/api/search", _j({"query": q, "db": "/etc", "table": "../x"}), {}),
        ("recursive smarts", "POST", "/api/search", _j({"query": q, "smarts": "[$([$([$([$(C)])])])]"}), {}),
        ("unicode query", "POST", "/api/search", _j({"query": "säure 😀 \u202e"}), {}),
        ("control characters query", "POST", "/api/search", _j({"query": "acid\x00\x1b[2J"}), {}),
        ("k 100", "POST", "/api/search", _j({"query": q, "k": 100}), {}),
        ("similar salt", "POST", "/api/similar", _j({"smiles": "CC(=O)[O-].[Na+]"}), {}),
        ("similar isotope", "POST", "/api/similar", _j({"smiles": "[13CH3]C(=O)O"}), {}),
        ("similar radical", "POST", "/api/similar", _j({"smiles": "[CH2]C"}), {}),
    ]


def check_error(status: int, headers: dict[str, str], body: bytes) -> list[str]:
    """What is wrong with an error response (empty: a 4xx with a short JSON detail, no internals)."""
    problems = []
    if not 400 <= status < 500:
        problems.append(f"status {status}")
    if not headers.get("content-type", "").startswith("application/json"):
        problems.append(f"content-type {headers.get('content-type')!r}")
    try:
        detail = json.loads(body)["detail"]
    except (ValueError, KeyError, TypeError):
        problems.append(f"body is not {{'detail': ...}}: {body[:80]!r}")
        return problems
    if not isinstance(detail, str):
        problems.append("detail is not a string")
        detail = json.dumps(detail)
    if len(detail) > 300:
        problems.append(f"detail of {len(detail)} characters")
    leak = internal_leak(detail)
    if leak:
        problems.append(f"detail reveals internals ({leak}): {detail[:120]!r}")
    return problems


def send_hostile(port: int) -> dict[str, Any]:
    results = {}
    for name, method, path, body, headers in hostile_requests():
        started = time.perf_counter()
        try:
            if "Content-Length" in headers:
                status, response_headers, data = _raw_request(port, method, path, body or b"", headers)
            else:
                status, response_headers, data = request(port, method, path, body, headers, timeout=120)
        except (OSError, http.client.HTTPException) as error:
            results[name] = {"problems": [f"no response: {type(error).__name__}: {error}"[:200]]}
            continue
        results[name] = {
            "status": status,
            "seconds": round(time.perf_counter() - started, 2),
            "problems": check_error(status, response_headers, data),
        }
    bad = {k: v for k, v in results.items() if v["problems"]}
    accepted = {}
    for name, method, path, body, headers in accepted_requests():
        try:
            status, response_headers, data = request(port, method, path, body, headers, timeout=120)
        except (OSError, http.client.HTTPException) as error:
            accepted[name] = {"status": None, "problem": f"no response: {error}"[:200]}
            continue
        problem = None
        if status >= 500:
            problem = f"status {status}"
        elif status >= 400:
            problem = "; ".join(check_error(status, response_headers, data)) or None
        accepted[name] = {"status": status, "problem": problem}
    return {
        "accepted": accepted,
        "accepted_problems": sum(v["problem"] is not None for v in accepted.values()),
        "requests": len(results),
        "answered_4xx_json": len(results) - len(bad),
        "not_4xx_json": len(bad),
        "problems": bad,
        "status_counts": dict(Counter(str(v.get("status")) for v in results.values())),
    }


def _raw_request(
    port: int, method: str, path: str, body: bytes, headers: dict[str, str]
) -> tuple[int, dict[str, str], bytes]:
    """A request with a hand-written Content-Length (http.client would correct it)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.putrequest(method, path)
        conn.putheader("Content-Type", "application/json")
        for key, value in headers.items():
            conn.putheader(key, value)
        conn.endheaders()
        with_body = headers.get("Content-Length", "").isdigit() and int(headers["Content-Length"]) < 10**6
        if with_body:
            conn.send(body)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def protocol_garbage(port: int) -> dict[str, Any]:
    """Bytes that are not HTTP: the server answers 4xx or closes, and stays up."""
    payloads = {
        "binary": bytes(range(256)),
        "no http version": b"GET /health\r\n\r\n",
        "huge header": b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 200_000 + b"\r\n\r\n",
        "negative length": b"POST /api/search HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n{}",
        "two lengths": b"POST /api/search HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 9\r\n\r\n{}",
        "bad chunk": b"POST /api/search HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        "non-numeric length": b"POST /api/search HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}",
    }
    out = {}
    for name, data in payloads.items():
        with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
            try:
                s.sendall(data)
                reply = s.recv(200)
            except OSError as error:
                reply = f"<{type(error).__name__}>".encode()
        line = reply.split(b"\r\n", 1)[0].decode("latin-1")
        status = int(line.split()[1]) if line.startswith("HTTP/") and len(line.split()) > 1 else None
        out[name] = {
            "status": status,
            "closed_without_reply": not reply,
            "not_5xx": status is None or status < 500,
        }
    return out


# --- slow requests ----------------------------------------------------------------------------


def slow_molecules(port: int, concurrent: int, atoms: int = 95) -> dict[str, Any]:
    """`concurrent` molecule requests whose 3D view is slow, at once; meanwhile a text search."""
    results: list[tuple[int, float, str]] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        started = time.perf_counter()
        body = _j({"smiles": nested_smiles(atoms - (i % 3)), "k": 3, "depict": False})
        try:
            status, _, data = request(port, "POST", "/api/similar", body, timeout=600)
            detail = json.loads(data).get("detail", "") if status != 200 else ""
        except (OSError, ValueError) as error:
            status, detail = -1, str(error)
        with lock:
            results.append((status, time.perf_counter() - started, str(detail)[:80]))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(concurrent)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    started = time.perf_counter()
    status, _, _ = request(
        port, "POST", "/api/search", _j({"query": "acid", "k": 5, "depict": False}), timeout=600
    )
    search_s = time.perf_counter() - started
    for t in threads:
        t.join()
    statuses = Counter(s for s, _, _ in results)
    return {
        "concurrent": concurrent,
        "status_counts": {str(k): v for k, v in sorted(statuses.items())},
        "5xx": sum(v for k, v in statuses.items() if k >= 500),
        "max_s": round(max((d for _, d, _ in results), default=0), 1),
        "details": sorted({d for s, _, d in results if s != 200}),
        "search_meanwhile_status": status,
        "search_meanwhile_s": round(search_s, 2),
    }


def slow_loris(port: int, sockets: int) -> dict[str, Any]:
    """`sockets` connections that send half a request and wait; a normal request meanwhile."""
    held = []
    for _ in range(sockets):
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        s.sendall(b"POST /api/search HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
        held.append(s)
    started = time.perf_counter()
    try:
        status = request(port, "GET", "/health", timeout=60)[0]
    except OSError:
        status = -1
    health_s = time.perf_counter() - started
    for s in held:
        s.close()
    return {"sockets": sockets, "health_status": status, "health_s": round(health_s, 2)}


def smarts_bound(port: int, length: int) -> dict[str, Any]:
    """A SMARTS that is exponential on the sheet molecule, and a plain search sent meanwhile."""
    out: dict[str, Any] = {"smarts": pathological_smarts(length)}

    def pinned() -> None:
        started = time.perf_counter()
        body = _j(
            {"query": "a polycyclic aromatic hydrocarbon", "k": 100, "smarts": out["smarts"], "depict": False}
        )
        status, _, _ = request(port, "POST", "/api/search", body, timeout=900)
        out.update(status=status, seconds=round(time.perf_counter() - started, 1))

    thread = threading.Thread(target=pinned)
    thread.start()
    time.sleep(0.5)
    started = time.perf_counter()
    status, _, _ = request(
        port, "POST", "/api/search", _j({"query": "acid", "k": 5, "depict": False}), timeout=900
    )
    out["search_meanwhile_status"] = status
    out["search_meanwhile_s"] = round(time.perf_counter() - started, 1)
    thread.join()
    return out


def run(
    workdir: str | Path,
    clients: int = 32,
    seconds: float = 60,
    molecules: int = 300,
    model: str = "tiny",
    slow_concurrent: int = 8,
    loris_sockets: int = 64,
    smarts_length: int = 30,
    molecule_wait_s: float = 30,
) -> dict[str, Any]:
    workdir = Path(workdir)
    checkpoint = resolve_model(model, workdir)
    db = build_catalog(workdir, molecules, checkpoint)
    figures: dict[str, Any] = {}
    server = Server(workdir, db, checkpoint, "--molecule-wait", str(molecule_wait_s))
    try:
        pid = server.child.pid
        figures["load"] = load(server.port, pid, clients, seconds)
        figures["hostile"] = send_hostile(server.port)
        figures["protocol_garbage"] = protocol_garbage(server.port)
        figures["slow_loris"] = slow_loris(server.port, loris_sockets)
        figures["slow_molecules"] = slow_molecules(server.port, slow_concurrent)
        if smarts_length:
            figures["pathological_smarts"] = smarts_bound(server.port, smarts_length)
        figures["server_up"] = server.alive()
        figures["rss_end_mb"] = round(rss_mb(pid), 1)
        log = server.child.output()
        figures["server_log_tracebacks"] = log.count("Traceback (most recent call last)")
    finally:
        server.stop()
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--molecules", type=int, default=300)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--slow-concurrent", type=int, default=8)
    parser.add_argument("--loris-sockets", type=int, default=64)
    parser.add_argument(
        "--smarts-length", type=int, default=30, help="chain atoms of the pathological SMARTS (0: skip)"
    )
    parser.add_argument("--molecule-wait", type=float, default=30)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    figures = run(
        args.workdir,
        args.clients,
        args.seconds,
        args.molecules,
        args.model,
        args.slow_concurrent,
        args.loris_sockets,
        args.smarts_length,
        args.molecule_wait,
    )
    write_report(args.out, figures)
    ok = figures["load"]["5xx"] == 0 and figures["hostile"]["not_4xx_json"] == 0 and figures["server_up"]
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
