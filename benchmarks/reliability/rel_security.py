"""Item 6, security review support: a static scan of the product code and checks of the service.

    python benchmarks/reliability/rel_security.py [--out security.json]

Static (Python `ast` over engine/, jobs/, kernels/, checkpoints/, configs/): findings for pickle-
family imports and calls, `torch.load` without `weights_only=True`, `eval`/`exec`/`compile`,
`yaml.load`/`unsafe_load`/`full_load`, `shell=True`, `os.system`/`os.popen`, `np.load(...,
allow_pickle=True)`, `trust_remote_code=True`, CORS middleware and a `0.0.0.0` literal; and, as
evidence for docs/reliability.md, where the safe choices are made (safe YAML loading, safetensors,
the loopback default, the vLLM `prompt_embeds` switch, the SQL built from client filters).

Service (`create_app` over a stand-in searcher, no table needed): the default bind address of
`serve()` and of `mvclam serve`, no CORS middleware, and that no request model of any route has a
field that takes SQL, paths, tables or embeddings.
"""

from __future__ import annotations

import argparse
import ast
import inspect
from pathlib import Path
from typing import Any

from rel_common import ROOT, write_report

PRODUCT_DIRS = ("engine", "jobs", "kernels", "checkpoints", "configs")
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "marshal", "shelve", "joblib"}
# Request fields a client must never control (SQL, paths, tables, raw tensors).
FORBIDDEN_FIELDS = {
    "where",
    "sql",
    "filter_sql",
    "path",
    "db",
    "table",
    "uri",
    "prompt_embeds",
    "embeddings",
    "tokens",
    "vector",
}


def product_files(root: Path = ROOT) -> list[Path]:
    return sorted(p for d in PRODUCT_DIRS for p in (root / d).rglob("*.py") if "__pycache__" not in p.parts)


def _name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value)}.{node.attr}"
    return ""


def _kw(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def scan_file(path: Path, root: Path = ROOT) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(findings, evidence) of one file."""
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source, str(path))
    rel = str(path.relative_to(root))
    findings: list[dict[str, Any]] = []
    evidence: list[dict[str, Any]] = []

    def add(target: list, node: ast.AST, rule: str) -> None:
        line = source.splitlines()[node.lineno - 1].strip()
        target.append({"where": f"{rel}:{node.lineno}", "rule": rule, "code": line[:140]})

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PICKLE_MODULES:
                    add(findings, node, f"imports {alias.name}")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PICKLE_MODULES:
            add(findings, node, f"imports from {node.module}")
        elif isinstance(node, ast.Call):
            name = _name(node.func)
            short = name.rsplit(".", 1)[-1]
            if name in ("eval", "exec", "compile", "__import__"):
                add(findings, node, f"calls {name}()")
            elif name.endswith("torch.load") and not _true(_kw(node, "weights_only")):
                add(findings, node, "torch.load without weights_only=True")
            if name.startswith("yaml.") and short in (
                "load",
                "unsafe_load",
                "full_load",
                "load_all",
                "unsafe_load_all",
            ):
                loader = _kw(node, "Loader")
                if short != "load" or loader is None or "Safe" not in _name(loader):
                    add(findings, node, f"{name} (not safe_load)")
            if name in ("yaml.safe_load", "yaml.safe_load_all"):
                add(evidence, node, "YAML read with yaml.safe_load")
            if _true(_kw(node, "shell")):
                add(findings, node, "shell=True")
            if name in ("os.system", "os.popen", "os.execv", "os.execvp", "commands.getoutput"):
                add(findings, node, f"calls {name}()")
            if short == "load" and name.startswith(("np.", "numpy.")) and _true(_kw(node, "allow_pickle")):
                add(findings, node, "np.load(allow_pickle=True)")
            if _true(_kw(node, "trust_remote_code")):
                add(findings, node, "trust_remote_code=True")
            if short in ("loads", "load") and name.split(".")[0] in PICKLE_MODULES:
                add(findings, node, f"calls {name}()")
            if short == "add_middleware" and any("CORS" in _name(a) for a in node.args):
                add(findings, node, "CORS middleware")
            if _kw(node, "allow_origins") is not None:
                add(findings, node, "allow_origins set")
            if _true(_kw(node, "enable_prompt_embeds")):
                add(
                    evidence,
                    node,
                    "vLLM prompt_embeds input enabled (offline engine, job-computed soft prompts)",
                )
            if short in ("load_file", "safe_open") or name.endswith("safetensors.torch.load_file"):
                add(evidence, node, "weights read with safetensors")
            if short == "from_pretrained" and _true(_kw(node, "local_files_only")):
                add(evidence, node, "Hugging Face loader with local_files_only=True")
        elif isinstance(node, ast.Constant) and node.value == "0.0.0.0":
            add(findings, node, "0.0.0.0 literal (binds every interface)")
        elif isinstance(node, ast.Constant) and node.value == "127.0.0.1":
            add(evidence, node, "loopback default")
    return findings, evidence


def static_scan(root: Path = ROOT) -> dict[str, Any]:
    findings: list[dict[str, Any]] = []
    evidence: list[dict[str, Any]] = []
    files = product_files(root)
    for path in files:
        f, e = scan_file(path, root)
        findings += f
        evidence += e
    return {"files": len(files), "findings": findings, "evidence": evidence}


class _StandIn:
    """Just enough of a CatalogSearcher for `create_app` to build its routes."""

    def __init__(self) -> None:
        from types import SimpleNamespace

        from mvclam.engine.views import ViewConfig

        self.model = SimpleNamespace(config=SimpleNamespace(views=ViewConfig()), model_version="x")


def request_fields(schema: dict[str, Any]) -> dict[str, list[str]]:
    """Every JSON field a client may send, per route, from the OpenAPI schema (nested models
    followed, e.g. `PropertyFilter.column`)."""
    components = schema.get("components", {}).get("schemas", {})

    def fields(node: dict[str, Any], prefix: str, seen: set[str]) -> list[str]:
        out: list[str] = []
        ref = node.get("$ref")
        if ref:
            name = ref.rsplit("/", 1)[-1]
            if name in seen:
                return out
            return fields(components.get(name, {}), prefix, seen | {name})
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                out += fields(node[key], prefix, seen)
        for key in ("anyOf", "oneOf", "allOf"):
            for option in node.get(key, []):
                out += fields(option, prefix, seen)
        for prop, sub in node.get("properties", {}).items():
            out.append(prefix + prop)
            out += fields(sub, f"{prefix}{prop}.", seen)
        return out

    bodies: dict[str, list[str]] = {}
    for path, methods in schema.get("paths", {}).items():
        for method, spec in methods.items():
            content = spec.get("requestBody", {}).get("content", {})
            for media in content.values():
                bodies[f"{method.upper()} {path}"] = fields(media.get("schema", {}), "", set())
    return bodies


def service_checks() -> dict[str, Any]:
    from mvclam.jobs.cli import build_parser
    from mvclam.jobs.serve import create_app, serve

    app = create_app(_StandIn())  # type: ignore[arg-type]
    middleware = [m.cls.__name__ for m in app.user_middleware]
    bodies = request_fields(app.openapi())
    flagged = {
        path: [f for f in fields if f.split(".")[-1] in FORBIDDEN_FIELDS] for path, fields in bodies.items()
    }
    args = build_parser().parse_args(["serve", "--db", "d"])
    return {
        "serve_default_host": inspect.signature(serve).parameters["host"].default,
        "cli_default_host": args.host,
        "middleware": middleware,
        "cors": any("CORS" in m for m in middleware),
        "routes": sorted({getattr(r, "path", "") for r in app.routes}),
        "request_fields": bodies,
        "forbidden_request_fields": {k: v for k, v in flagged.items() if v},
    }


def run() -> dict[str, Any]:
    return {"static": static_scan(), "service": service_checks()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    figures = run()
    write_report(args.out, figures)
    return (
        0 if not figures["static"]["findings"] and not figures["service"]["forbidden_request_fields"] else 1
    )


if __name__ == "__main__":
    raise SystemExit(main())
