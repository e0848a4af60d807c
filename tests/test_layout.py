"""The package's shape (issue: layout by stage): imports point down the stages and form no cycle,
each shared helper has one home, the config is read only through its validated keys, the start-up
path and the report commands stay free of torch, and every stage declares the config it reads."""
import ast
import copy
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agrepa import config as config_mod
from test_workflow_support import DEFAULT_CONFIG, REPO

PKG = REPO / "src" / "agrepa"

# Stage order, bottom to top: a module may import its own stage and anything below it (the ground
# floor, rank 0, imports only itself; every other rank is one stage).
RANK = {"io": 0, "config": 0, "audio": 0, "store": 0, "safetensors_stream": 0, "parts": 0, "device": 0, "batching": 0, "model": 0,
        "corpora": 1, "teachers": 2, "tokenizers": 3, "training": 4, "probing": 5, "generation": 6,
        "evaluation": 7, "caching": 8, "reports": 9, "fixtures": 10, "planning": 10, "cli": 11, "warm": 12}


def modules():
    for path in sorted(PKG.rglob("*.py")):
        parts = path.relative_to(PKG.parent).with_suffix("").parts
        yield (".".join(parts[:-1]) if parts[-1] == "__init__" else ".".join(parts)), path


def stage_of(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "cli"


def imports_of(name: str, path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return config_mod._imported_modules(name, tree)


def test_every_stage_is_ranked():
    assert {stage_of(n) for n, _ in modules()} - {"agrepa"} <= set(RANK) | {"__main__"}


def test_imports_point_down_the_stages_and_form_no_cycle():
    graph = {name: imports_of(name, path) for name, path in modules()}
    upward = [f"{a} -> {b}" for a, deps in graph.items() for b in deps
              if RANK.get(stage_of(b), 0) > RANK.get(stage_of(a), 0) and b != "agrepa"]
    assert not upward, "imports must point down the stages (or stay in the stage):\n" + "\n".join(upward)
    state, cycle = {}, []

    def visit(node, trail):
        state[node] = "open"
        for dep in sorted(graph.get(node, ())):
            if dep == node or dep == "agrepa" or dep.startswith(node + "."):
                continue  # a package importing its own submodules is not a cycle
            if state.get(dep) == "open":
                cycle.append(" -> ".join(trail + [node, dep]))
            elif dep not in state:
                visit(dep, trail + [node])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    assert not cycle, "circular imports:\n" + "\n".join(cycle)


def test_an_upward_import_would_be_caught(tmp_path):
    # the check itself can fail: a training module importing the evaluation stage is upward
    tree = ast.parse("from ..evaluation import metrics\n")
    deps = config_mod._imported_modules("agrepa.training.train", tree)
    assert "agrepa.evaluation.metrics" in deps and RANK["evaluation"] > RANK["training"]


def definitions(pattern: str) -> list[str]:
    """Files (package and workflow) that define ``pattern`` (a def or a top-level assignment)."""
    rx = re.compile(rf"^(def {pattern}\(|{pattern} = )", re.M)
    files = list(PKG.rglob("*.py")) + list((REPO / "workflow").rglob("*.smk")) + [REPO / "Snakefile"]
    return sorted(str(f.relative_to(REPO)) for f in files if rx.search(f.read_text()))


MAX_FUNCTION_LINES = 80


def long_functions(root: Path) -> list[str]:
    """`file:function (n lines)` for every function or method over MAX_FUNCTION_LINES."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    found.append(f"{path.relative_to(root.parent)}:{node.name} ({n} lines)")
    return found


def test_no_function_is_over_80_lines():
    assert long_functions(PKG) == []


def test_a_long_function_would_be_listed(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (pkg / "m.py").write_text(f"def short():\n    return 1\n\n\ndef run():\n{body}\n")
    assert long_functions(pkg) == [f"pkg/m.py:run ({MAX_FUNCTION_LINES + 1} lines)"]


@pytest.mark.parametrize("name,home", [
    ("resolve_device", "src/agrepa/device.py"),
    ("move_batch", "src/agrepa/device.py"),
    ("load_stats", "src/agrepa/corpora/mels.py"),
    ("build_requests", "src/agrepa/generation/sampling.py"),
    ("DOMAINS", "src/agrepa/config.py"),
    ("STRATEGIES", "src/agrepa/config.py"),
    ("vs_paper", "workflow/rules/common.smk"),
    ("check_layers", "src/agrepa/config.py"),
])
def test_each_shared_helper_has_one_definition(name, home):
    assert definitions(name) == [home]


def test_no_second_copy_of_a_helper_under_another_name():
    src = {p: p.read_text() for p in PKG.rglob("*.py")}
    smk = "\n".join(p.read_text() for p in (REPO / "workflow").rglob("*.smk"))
    auto_device = [str(p) for p, t in src.items() if re.search(r"[\"']cuda[\"'] if torch.cuda.is_available", t)]
    assert auto_device == [str(PKG / "device.py")]
    assert [str(p) for p, t in src.items() if re.search(r"""\(\s*["']speech["'],\s*["']audio["']\s*\)""", t)] \
        == [str(PKG / "config.py")]
    vs_paper_paths = re.compile(r"""["']_vs_paper""")        # a path built from a table's name
    assert not [p for p, t in src.items() if vs_paper_paths.search(t)]
    assert len(vs_paper_paths.findall(smk)) == 1
    assert not any('meta.get("stats")' in t for p, t in src.items() if p != PKG / "corpora" / "mels.py")


def config_key_names() -> set[str]:
    names = set()

    def walk(node):
        if isinstance(node, dict):
            for k, v in node.items():
                names.add(str(k))
                walk(v)
    walk(yaml.safe_load(DEFAULT_CONFIG.read_text()))
    return names


# how the package names the config and its sections (cfg, cfg_audio, tcfg, sc = cfg["sample"], ...)
CONFIG_NAMES = r"(?:cfg|cfg_\w+|\w+cfg|sc|tc|ec|fi|pc|lt|ac)"


def test_no_config_key_is_read_with_a_fallback_default():
    keys = config_key_names()
    rx = re.compile(rf"""\b{CONFIG_NAMES}(?:\[[^\]]+\])*\.get\(\s*["']([A-Za-z_][\w]*)["']""")
    offenders = [f"{p.relative_to(REPO)}:{t[:m.start()].count(chr(10)) + 1}: .get({m.group(1)!r}, ...)"
                 for p in PKG.rglob("*.py") for t in [p.read_text()] for m in rx.finditer(t)
                 if m.group(1) in keys]
    assert not offenders, "config keys must be read as cfg[...][...] (validated, no hidden defaults):\n" + \
        "\n".join(offenders)


def test_the_config_has_no_thread_keys():
    assert "threads" not in yaml.safe_load(DEFAULT_CONFIG.read_text())["teachers"]
    assert "threads" not in yaml.safe_load(DEFAULT_CONFIG.read_text())["tokens"]


def test_threads_option_sets_torch_threads(monkeypatch, tmp_path):
    import torch

    from agrepa import cli
    from agrepa.teachers import cache
    from agrepa.tokenizers import streams

    seen = []
    monkeypatch.setattr(streams, "fit_stream", lambda *a, **k: seen.append(torch.get_num_threads()))
    monkeypatch.setattr(cache, "embed_manifest", lambda *a, **k: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    try:
        assert cli.main(["tokens", "fit", "--config", str(DEFAULT_CONFIG), "--threads", "3", "--stream", "speech",
                         "--manifest", "m.csv", "--out", str(tmp_path / "t")]) == 0
        assert cli.main(["teacher", "embed", "--config", str(DEFAULT_CONFIG), "--threads", "2", "--role",
                         "semantic", "--manifest", "m.csv", "--out", str(tmp_path / "e")]) == 0
    finally:
        torch.set_num_threads(before)
    assert seen == [3, 2]


def run_python(code: str) -> str:
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_help_imports_no_torch():
    # through the console script's entry point (agrepa.warm.main, no warm server: in-process)
    out = run_python("import sys, contextlib, io\n"
                     "from agrepa import warm\n"
                     "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
                     "    warm.main(['--help'])\n"
                     "print(sorted(m for m in ('torch', 'pandas', 'matplotlib', 'transformers') if m in sys.modules))")
    assert out.strip() == "[]"


CONFIG_READ = re.compile(r"cfg")


def config_chains(tree: ast.AST) -> set[str]:
    """Dotted key chains read as ``cfg[...]...`` in a module (``*`` for a computed key)."""
    inner = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Subscript)}
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and id(node) not in inner:
            keys, n = [], node
            while isinstance(n, ast.Subscript):
                s = n.slice
                keys.append(s.value if isinstance(s, ast.Constant) and isinstance(s.value, str) else "*")
                n = n.value
            if isinstance(n, ast.Name) and n.id == "cfg":
                out.add(".".join(reversed(keys)))
    return out


def covered(chain: str, declared) -> bool:
    for key in declared:
        pattern = re.sub(r"\{\w+\}", "*", key).split(".")
        parts = chain.split(".")
        if len(parts) >= len(pattern) and all(p == "*" or c == p or c == "*" for p, c in zip(pattern, parts)):
            return True
    return False


@pytest.mark.parametrize("name,path", [(n, p) for n, p in modules() if n != "agrepa.config"])
def test_every_module_declares_the_config_it_reads(name, path):
    tree = ast.parse(path.read_text())
    chains = config_chains(tree)
    declared = [ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                and any(getattr(t, "id", None) == "CONFIG_KEYS" for t in n.targets)]
    if chains:
        assert declared, f"{name} reads {sorted(chains)} but declares no CONFIG_KEYS"
    missing = sorted(c for c in chains if not covered(c, declared[0] if declared else ()))
    assert not missing, f"{name}: CONFIG_KEYS {declared} do not cover {missing}"


def rule_stages() -> dict[str, str]:
    """rule name -> the stage CLI module whose config keys its `cfg` param hashes."""
    text = {p.name: p.read_text() for p in (REPO / "workflow" / "rules").glob("*.smk")}
    report_stage = re.search(r'REPORT_PARAMS = dict\(cfg=config_hash\("([\w.]+)"', text["report.smk"]).group(1)
    out = {}
    for body in text.values():
        for m in re.finditer(r"^rule (\w+):\n(.*?)(?=^rule |\Z)", body, re.M | re.S):
            name, block = m.groups()
            stage = re.search(r'config_hash\("([\w.]+)"', block)
            out[name] = stage.group(1) if stage else (report_stage if "**REPORT_PARAMS" in block else None)
    return out


def test_every_agrepa_rule_hashes_its_stage_config():
    stages = rule_stages()
    missing = [r for r, s in stages.items() if s is None and r not in ("all", "data_merge")]
    assert not missing, f"rules without a config hash param: {missing}"
    assert stages["evaluate_reference"] == "agrepa.evaluation.cli"
    assert "teachers" in config_mod.config_keys("agrepa.evaluation.cli")   # the floor's FAD embedding


def set_leaf(cfg: dict, key: str) -> None:
    """Change one value inside the dotted section ``key`` of ``cfg`` (in place)."""
    node = cfg
    for part in key.split("."):
        node = node[part]
    if isinstance(node, dict):
        first = next(iter(node)) if node else None
        if first is None:
            node["__new__"] = 1
        else:
            node[first] = {"changed": repr(node[first])}
    else:
        parent = cfg
        parts = key.split(".")
        for part in parts[:-1]:
            parent = parent[part]
        parent[parts[-1]] = {"changed": repr(node)}


@pytest.mark.parametrize("rule,stage", sorted((r, s) for r, s in rule_stages().items() if s))
def test_each_rule_hash_covers_every_section_its_stage_declares(rule, stage):
    base = config_mod.load(DEFAULT_CONFIG)
    keys = config_mod.config_keys(stage)
    assert keys, stage
    wildcards = {"method": "repa_l4", "arch": "dit", "role": "semantic"}  # rules fill {arch}, {role} too
    before = config_mod.section_hash(base, keys, **wildcards)
    for key in keys:
        cfg = copy.deepcopy(base)
        set_leaf(cfg, key.format(**wildcards))
        assert config_mod.section_hash(cfg, keys, **wildcards) != before, (rule, key)
    # a section the stage does not read leaves the hash alone
    untouched = [s for s in ("resources", "results_dir") if not any(k.split(".")[0] == s for k in keys)]
    cfg = copy.deepcopy(base)
    for s in untouched:
        set_leaf(cfg, s)
    assert config_mod.section_hash(cfg, keys, **wildcards) == before
