"""The config: one YAML mapping, the single source of truth for every number.

``config/config.yaml`` is the embedded default; other files (``config/paper.yaml``,
``config/test.yaml``) are overlays deep-merged on top of it, exactly as Snakemake
merges ``--configfile`` over the Snakefile's ``configfile:``. Command-line
``--set a.b=value`` overrides are applied last (value parsed as YAML). The merged
config is validated against the JSON schema shipped with the package
(``agrepa/data/config.schema.yaml``, every object closed and every key required), so
code reads ``cfg["section"]["key"]`` and never falls back to a default of its own.

The names the schema's enums and the workflow's wildcards are built from live here too.
"""
from __future__ import annotations

import copy
import os
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

import yaml

from . import io

DOMAINS = ("speech", "audio")                           # a clip's domain; index = domain id in batches
STRATEGIES = ("foga", "lasp", "gradnorm", "random")     # layer-selection strategies (Table 3)
SCHEMA = resources.files("agrepa") / "data" / "config.schema.yaml"


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


@lru_cache(maxsize=1)
def _validator():
    import jsonschema  # only where a config is loaded (keeps `agrepa --help` light)

    schema = yaml.safe_load(SCHEMA.read_text())
    return jsonschema.Draft202012Validator(schema)


def validate(cfg: dict, source: str = "config") -> dict:
    """Check ``cfg`` against the schema; a ValueError names the first bad key and why."""
    errors = sorted(_validator().iter_errors(cfg), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        where = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        if err.validator == "required":
            missing = [k for k in err.validator_value if k not in err.instance]
            key = ".".join(str(p) for p in [*err.absolute_path, missing[0]]) if missing else where
            raise ValueError(f"{source}: config key {key!r} is missing")
        if err.validator == "additionalProperties":
            raise ValueError(f"{source}: at {where!r}: {err.message} (a misspelt key?)")
        raise ValueError(f"{source}: config key {where!r}: {err.message}")
    return cfg


def load(paths: Iterable[str | os.PathLike] | str | os.PathLike, overrides: Iterable[str] = ()) -> dict:
    """Load and merge config files (the first is the base, normally config/config.yaml), apply
    ``--set`` overrides, and validate the result."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = list(paths)
    if not paths:
        raise ValueError("no config file given (pass --config config/config.yaml [--config OVERLAY ...])")
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
    return validate(cfg, source=" + ".join(str(p) for p in paths))


def save_resolved(cfg: dict, out_dir: str | os.PathLike, name: str = "config.resolved.yaml") -> Path:
    """Write the resolved config next to a run's outputs (atomically)."""
    path = Path(out_dir) / name
    io.write_text(path, yaml.safe_dump(cfg, sort_keys=False))
    return path


def add_cli_args(parser) -> None:
    """The arguments every subcommand takes."""
    parser.add_argument("--config", action="append", required=True, metavar="YAML",
                        help="config file(s): config/config.yaml, then overlays merged over it in order "
                             "(the workflow passes its merged results/config.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key, e.g. --set model.dim=256")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="CPU threads of this job (torch, CTranslate2, onnxruntime); the workflow "
                             "passes the rule's threads (default: the libraries' own)")


def from_args(args) -> dict:
    return load(args.config, args.set)
