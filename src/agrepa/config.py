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

import ast
import copy
import os
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

import yaml

from . import io

PACKAGE_DIR = Path(__file__).resolve().parent

DOMAINS = ("speech", "audio")                           # a clip's domain; index = domain id in batches
DOMAIN_TEACHER = {"speech": "semantic", "audio": "acoustic"}   # the teacher a domain's clips are aligned to
STRATEGIES = ("foga", "lasp", "gradnorm", "random")     # layer-selection strategies (Table 3)
CACHE_STRATEGIES = ("lsac", "causal", "random", "pab", "deepcache")  # attention-caching plans (Table L1)
PAD_ID = 0                                              # token id of padding in the unified vocabulary
ARCHS = ("dit", "voicebox", "cosyvoice", "f5")          # flow-matching backbones (model.arch; Table 4)
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


def check_layers(layers, n_layers: int, key: str) -> list[int]:
    """A method's fixed REPA layer set (1-based; [] for the baseline) checked against the model depth
    (a check across keys that the schema cannot express); the error names ``key``."""
    layers = [int(layer) for layer in layers]
    bad = [layer for layer in layers if not 1 <= layer <= n_layers]
    if bad:
        raise ValueError(f"config key {key}: {bad} outside 1..{n_layers} (model.n_layers)")
    return layers


def reported_methods(cfg: dict) -> list[str]:
    """The methods the workflow trains, in order: Table 2's rows, Table 3's baseline, the run behind
    each strategy of ``selection.strategies`` (``report.table3.strategies`` maps it; a missing entry is
    an error naming the key) and the branches of ``lsac.methods`` (attention caching, Table L1)."""
    t3 = cfg["report"]["table3"]
    missing = [s for s in cfg["selection"]["strategies"] if s not in t3["strategies"]]
    if missing:
        raise ValueError(f"config key report.table3.strategies: no method for strategy {missing[0]!r} "
                         "(listed in selection.strategies)")
    names = [*cfg["report"]["table2"]["methods"], t3["baseline"],
             *(t3["strategies"][s] for s in cfg["selection"]["strategies"]), *cfg["lsac"]["methods"]]
    return list(dict.fromkeys(names))


BRANCH_TRAIN_KEYS = ("cfg_mode", "cfg_drop_tokens", "cfg_drop_prompt")   # what methods.<m>.train may set


def branch_train(cfg: dict, method: str) -> dict:
    """``methods.<method>.train`` ({} when absent): the CFG dropout of the method's Phase II branch
    (``train.cfg_mode`` and the rates; nothing else may differ between branches). The rates
    ``train.cfg_drop_*`` are the DiT recipe's: on another ``model.arch`` (whose rates are
    ``model.<arch>.cfg_drop_*``) only ``cfg_mode`` may be set. Errors name the key."""
    try:
        spec = cfg["methods"][method]
    except KeyError:
        raise KeyError(f"methods.{method}: unknown method (not in the config's methods:)") from None
    over = spec["train"] if "train" in spec else {}
    bad = sorted(set(over) - set(BRANCH_TRAIN_KEYS))
    if bad:
        raise ValueError(f"methods.{method}.train: {bad} cannot differ between branches (allowed: "
                         f"{list(BRANCH_TRAIN_KEYS)})")
    rates, arch = sorted(k for k in over if k != "cfg_mode"), cfg["model"]["arch"]
    if rates and arch != "dit":
        raise ValueError(f"methods.{method}.train: {rates} are the DiT recipe's CFG rates; model.arch is {arch!r}, "
                         f"whose rates are model.{arch}.cfg_drop_* (only cfg_mode may be overridden per method)")
    return dict(over)


def rr_runs(cfg: dict) -> dict:
    """Seed 003's runs (``report.rr``): ``{"r1" | "r2" | "r3": {"methods": [...], "seeds": [...]},
    "methods": every RR method in order}``. Seeds ``null``: R1 all of the config's ``seeds``, R2 and
    R3 the first of them. R2 also trains ``report.rr.baseline`` (its reference row). A method missing
    from ``methods:`` or a seed missing from ``seeds`` is an error naming the key."""
    rc, seeds = cfg["report"]["rr"], [int(s) for s in cfg["seeds"]]

    def chosen(table: str, default: list[int]) -> list[int]:
        return default if rc[table]["seeds"] is None else [int(s) for s in rc[table]["seeds"]]

    out = {"r1": {"methods": list(rc["r1"]["methods"]), "seeds": chosen("r1", seeds)},
           "r2": {"methods": list(dict.fromkeys([rc["baseline"], *rc["r2"]["methods"]])), "seeds": chosen("r2", seeds[:1])},
           "r3": {"methods": list(rc["r3"]["methods"]), "seeds": chosen("r3", seeds[:1])}}
    if rc["baseline"] not in out["r1"]["methods"]:
        raise ValueError(f"config key report.rr.baseline: {rc['baseline']!r} is not a row of report.rr.r1.methods")
    for table, runs in out.items():
        for m in runs["methods"]:
            if m not in cfg["methods"]:
                raise ValueError(f"config key report.rr.{table}.methods: method {m!r} is not defined in methods:")
        bad = [s for s in runs["seeds"] if s not in seeds]
        if bad:
            raise ValueError(f"config key report.rr.{table}.seeds: {bad} not in seeds {seeds}")
    out["methods"] = list(dict.fromkeys(m for t in ("r1", "r2", "r3") for m in out[t]["methods"]))
    return out


def validate(cfg: dict, source: str = "config") -> dict:
    """Check ``cfg`` against the schema, then across keys; a ValueError names the first bad key and why."""
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
        why = err.schema.get("description") if isinstance(err.schema, dict) else None
        raise ValueError(f"{source}: config key {where!r}: {err.message}" + (f" ({why})" if why else ""))
    for method in reported_methods(cfg):
        if method not in cfg["methods"]:
            raise ValueError(f"{source}: config key methods: method {method!r} (used by report.table2/table3 "
                             "or lsac.methods) is not defined")
        if "layers" in cfg["methods"][method]:
            check_layers(cfg["methods"][method]["layers"], cfg["model"]["n_layers"], f"methods.{method}.layers ({source})")
    if not 0 <= cfg["lsac"]["n_seeds"] <= len(cfg["seeds"]):
        raise ValueError(f"{source}: config key lsac.n_seeds: {cfg['lsac']['n_seeds']} must lie in "
                         f"0..{len(cfg['seeds'])} (the number of seeds)")
    try:
        rr_methods = rr_runs(cfg)["methods"]
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None
    for method in rr_methods:
        if "layers" in cfg["methods"][method]:
            check_layers(cfg["methods"][method]["layers"], cfg["model"]["n_layers"], f"methods.{method}.layers ({source})")
    G, A, job = int(cfg["train"]["batch_size"]), int(cfg["train"]["accumulate"]), cfg["resources"]["train"]
    procs = max(1, int(job["gpu"])) * int(job["nodes"])       # a workflow training job's processes
    if A < 1:
        raise ValueError(f"{source}: config key train.accumulate: must be >= 1 (micro-steps per optimiser step), got {A}")
    if G % (procs * A):
        raise ValueError(f"{source}: config key train.batch_size: {G} is not divisible by the processes of a training "
                         f"job (resources.train.gpu x resources.train.nodes = {procs}) x train.accumulate {A}: the "
                         f"per-process micro-batch is train.batch_size / (processes x train.accumulate)")
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


# -- which config sections a stage reads (rerun tracking in the workflow) ----------------------

def _module_file(name: str) -> Path | None:
    """The source file of module ``agrepa.x.y`` (package: its __init__.py), or None."""
    parts = name.split(".")[1:]
    if not parts:
        return PACKAGE_DIR / "__init__.py"
    rel = Path(*parts)
    for path in (PACKAGE_DIR / rel.with_suffix(".py"), PACKAGE_DIR / rel / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imported_modules(name: str, tree: ast.AST) -> set[str]:
    """agrepa modules a module imports anywhere (function-level imports too), resolved statically."""
    package = name if _module_file(name).name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "agrepa"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            if base.split(".")[0] != "agrepa":
                continue
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names if _module_file(f"{base}.{a.name}")}
    return {m for m in found if _module_file(m)}


@lru_cache(maxsize=None)
def config_keys(module: str) -> tuple[str, ...]:
    """The config keys a stage reads: the ``CONFIG_KEYS`` of ``module`` and of every agrepa module it
    imports, transitively, found by parsing the sources (nothing is imported, so the workflow can ask
    cheaply; cached, as every job of a rule asks). Keys are dotted sections; ``{name}`` stands for a rule
    wildcard (``methods.{method}``)."""
    keys: set[str] = set()
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = _module_file(name)
        if path is None:
            raise ValueError(f"config_keys: no module {name!r} in {PACKAGE_DIR}")
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "CONFIG_KEYS" for t in node.targets):
                keys.update(ast.literal_eval(node.value))
        todo += sorted(_imported_modules(name, tree) - seen)
    return tuple(sorted(keys))


def section_hash(cfg: dict, keys, **wildcards) -> str:
    """A short hash of the config sections ``keys`` (dotted; ``{name}`` filled from ``wildcards``; a key
    whose wildcard is not given is left out): a rule's param, so editing a section it reads reruns it."""
    values = {}
    for key in keys:
        try:
            key = key.format(**wildcards)
        except KeyError:
            continue
        node = cfg
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        values[key] = node
    return io.sha256_json(values)[:16]
