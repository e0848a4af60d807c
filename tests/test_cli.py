import importlib
import subprocess
import sys

import pytest

from agrepa import cli


@pytest.mark.parametrize("title,name", cli.STAGES)
def test_every_stage_registers_its_subcommands(title, name):
    module = importlib.import_module(name)
    assert callable(getattr(module, "register", None)), f"{name} has no register(subparsers)"


def test_help_lists_every_subcommand_grouped_by_stage():
    out = subprocess.run([sys.executable, "-m", "agrepa.cli", "--help"], capture_output=True,
                         text=True, check=True).stdout
    listing = out.split("commands, by stage")[1]
    expected = {"data": ["data"], "teachers": ["teacher"], "tokens": ["tokens"], "training": ["train"],
                "probing": ["probe", "select"], "generation": ["sample"],
                "evaluation": ["evaluate", "convergence", "listening-test"],
                "attention caching": ["lsac-probe", "lsac-select", "lsac-eval"], "reports": ["report"]}
    blocks = {}
    for line in listing.splitlines()[1:]:
        if line and not line.startswith(" "):
            current = blocks.setdefault(line.rstrip(":"), [])
        elif line.strip():
            current.append(line.split()[0])
    for stage, commands in expected.items():
        assert set(commands) <= set(blocks[stage]), (stage, blocks)
    assert list(blocks)[: len(expected)] == [t for t, _ in cli.STAGES][: len(expected)]


def test_bad_config_path_is_a_clear_error(tmp_path, capsys):
    rc = cli.main(["data", "synth", "--config", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "d")])
    assert rc == 2
    assert "nope.yaml: config file not found" in capsys.readouterr().err
