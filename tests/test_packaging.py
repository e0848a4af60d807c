"""The conda environment and pyproject.toml pin the same packages; the quickstart holds."""
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pins(lines):
    out = {}
    for line in lines:
        m = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*==\s*([^\s;]+)\s*", line)
        if m:
            out[m.group(1).lower().replace("_", "-")] = m.group(2)
    return out


def test_conda_env_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    py_pins = _pins(project["dependencies"])
    env = yaml.safe_load((ROOT / "envs" / "agrepa.yaml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    conda_pins = _pins([p for p in pip_section if not p.startswith("-e")])
    assert py_pins, "pyproject.toml has no pinned dependencies"
    assert conda_pins == py_pins, (
        f"envs/agrepa.yaml drifted from pyproject.toml: only in pyproject "
        f"{sorted(set(py_pins.items()) - set(conda_pins.items()))}, only in conda "
        f"{sorted(set(conda_pins.items()) - set(py_pins.items()))}")
    assert "python=3.11" in env["dependencies"]


def test_every_dependency_is_pinned():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    unpinned = [d for d in project["dependencies"] if "==" not in d]
    assert not unpinned, f"unpinned dependencies in pyproject.toml: {unpinned}"
    assert _pins(project["dependencies"])["torch"].startswith("2.11.")
    assert _pins(project["dependencies"])["torchaudio"].startswith("2.11.")


def test_readme_quickstart_is_two_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    commands = [ln.split("#")[0].strip() for ln in block.strip().splitlines() if ln.split("#")[0].strip()]
    assert commands == ["make run", "make test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci
    makefile = (ROOT / "Makefile").read_text()
    # `make test` is the whole suite, rehearsal included, in a random order whose seed it prints
    assert re.search(r"^test: setup\n\t@echo .*random order seed \$\(SEED\).*\n"
                     r"\t\$\(BIN\)/pytest -x -q --randomly-seed=\$\(SEED\) --durations=30$", makefile, re.M)
    pytest_ini = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert "addopts" not in pytest_ini        # nothing deselected: the rehearsal of paper.yaml runs in CI
    assert any(d.startswith("pytest-randomly==") for d in
               tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"])
    assert re.search(r"^run: setup\n\t\$\(BIN\)/snakemake --cores \$\(CORES\)$", makefile, re.M)
