import importlib
import subprocess
import sys

import pytest

from agrepa import cli


@pytest.mark.parametrize("name", cli.COMMAND_MODULES)
def test_every_stage_module_exists_and_registers(name):
    module = importlib.import_module(name)
    assert callable(getattr(module, "register", None)), f"{name} has no register(subparsers)"


def test_help_lists_every_stage():
    out = subprocess.run([sys.executable, "-m", "agrepa.cli", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for command in ["data", "teacher", "tokens", "train", "probe", "select", "sample", "evaluate",
                    "convergence", "listening-test", "report"]:
        assert command in out


def test_bad_config_path_is_a_clear_error(tmp_path, capsys):
    rc = cli.main(["data", "synth", "--config", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "d")])
    assert rc == 2
    assert "nope.yaml: config file not found" in capsys.readouterr().err
