"""The config: one YAML mapping, the single source of truth for every number.

``config/config.yaml`` is the embedded default; other files (``config/paper.yaml``,
``config/test.yaml``) are overlays deep-merged on top of it, exactly as Snakemake
merges ``--configfile`` over the Snakefile's ``configfile:``. Command-line
``--set a.b=value`` overrides are applied last (value parsed as YAML).
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Iterable

import yaml

from . import io

DEFAULT = Path(__file__).resolve().parents[2] / "config" / "config.yaml"


def deep_merge(base: dict, over: dict) -> dict:
    """Return ``base`` updated recursively by ``over`` (neither is modified)."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_yaml(path: str | os.PathLike) -> dict:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: config file not found") from None
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML ({err})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config must be a mapping, got {type(data).__name__}")
    return data


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ValueError(f"--set {item!r}: expected KEY.PATH=VALUE")
    key, value = item.split("=", 1)
    return key.strip().split("."), yaml.safe_load(value)


def load(paths: Iterable[str | os.PathLike] | str | os.PathLike | None = None,
         overrides: Iterable[str] = ()) -> dict:
    """Load and merge config files (first is the base), then apply overrides."""
    if paths is None:
        paths = [DEFAULT]
    elif isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    cfg: dict = {}
    for p in paths:
        cfg = deep_merge(cfg, read_yaml(p))
    for item in overrides:
        keys, value = parse_override(item)
        node = cfg
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {item!r}: {k!r} is not a mapping")
        node[keys[-1]] = value
    return cfg


def get(cfg: dict, dotted: str, default: Any = ...) -> Any:
    """``get(cfg, "model.dim")``; raises a KeyError naming the key when absent."""
    node: Any = cfg
    for k in dotted.split("."):
        if not isinstance(node, dict) or k not in node:
            if default is not ...:
                return default
            raise KeyError(f"config key {dotted!r} is missing (at {k!r})")
        node = node[k]
    return node


def save_resolved(cfg: dict, out_dir: str | os.PathLike, name: str = "config.resolved.yaml") -> Path:
    """Write the resolved config next to a run's outputs (atomically)."""
    path = Path(out_dir) / name
    io.write_text(path, yaml.safe_dump(cfg, sort_keys=False))
    return path


def add_cli_args(parser) -> None:
    """The two arguments every subcommand takes."""
    parser.add_argument("--config", action="append", default=None, metavar="YAML",
                        help="config file(s); later ones are merged over earlier ones "
                             "(default: config/config.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key, e.g. --set model.dim=256")


def from_args(args) -> dict:
    return load(args.config, args.set)
