"""YAML configs into dataclasses: the one loader behind model, training and job configs.

``read_config("small")`` reads ``configs/small.yaml`` (shipped inside the package) or any YAML path
into a dict; ``values`` (keyword values, None meaning "not given") and dotted ``key=value``
``overrides`` (values parsed as YAML, so ``true``, ``8`` and ``[a, b]`` work) are applied on top, in
that order. ``build_dataclass`` turns a dict into a dataclass and names unknown keys;
``load_dataclass`` is both in one call.
"""

from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


def config_path(name_or_path: str | Path) -> Path:
    """Resolve a config name shipped with the package (``small``, ``paper``) or a YAML path."""
    path = Path(name_or_path)
    if path.suffix in {".yaml", ".yml"} or path.exists():
        if not path.exists():
            raise FileNotFoundError(f"config file not found: {path}")
        return path
    shipped = resources.files("mvclam.configs") / f"{name_or_path}.yaml"
    if not shipped.is_file():
        available = sorted(
            p.name.removesuffix(".yaml")
            for p in resources.files("mvclam.configs").iterdir()
            if p.name.endswith(".yaml")
        )
        raise FileNotFoundError(f"no shipped config named '{name_or_path}'; available: {available}")
    return Path(str(shipped))


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (values parsed as YAML) to a nested config dict."""
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override must look like section.key=value, got '{item}'")
        dotted, raw = item.split("=", 1)
        keys = dotted.strip().split(".")
        node = data
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ValueError(f"override '{item}': '{key}' is not a section")
        node[keys[-1]] = yaml.safe_load(raw)
    return data


def read_config(
    name_or_path: str | Path, overrides: list[str] | None = None, values: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The YAML config as a dict, then `values` (None means "not given"), then `overrides`.

    A config may start from another one: ``base: NAME`` (a shipped name, or a YAML path relative to
    the including file) is read first and this file's keys replace its keys (sections merge)."""
    data = _read_with_base(config_path(name_or_path), seen=())
    data.update({k: v for k, v in (values or {}).items() if v is not None})
    return apply_overrides(data, overrides)


def _read_with_base(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    if path.resolve() in seen:
        raise ValueError(f"config base cycle: {' -> '.join(str(p) for p in (*seen, path))}")
    with open(path) as handle:
        data = yaml.safe_load(handle) or {}
    base = data.pop("base", None)
    if base is None:
        return data
    relative = path.parent / str(base)
    base_path = relative if relative.suffix in {".yaml", ".yml"} and relative.exists() else config_path(base)
    return _merged(_read_with_base(base_path, (*seen, path.resolve())), data)


def _merged(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        out[key] = (
            _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def build_dataclass(cls: type[T], data: dict[str, Any], what: str = "config keys") -> T:
    """``cls(**data)``, refusing keys that are not fields: "unknown <what>: [...]"."""
    unknown = set(data) - {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    if unknown:
        raise ValueError(f"unknown {what}: {sorted(unknown)}")
    return cls(**data)


def load_dataclass(
    cls: type[T],
    name_or_path: str | Path,
    what: str = "config keys",
    overrides: list[str] | None = None,
    values: dict[str, Any] | None = None,
) -> T:
    """A flat dataclass from a YAML config (see `read_config` for `overrides` and `values`)."""
    return build_dataclass(cls, read_config(name_or_path, overrides, values), what)
