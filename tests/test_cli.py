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


def leaf_commands(parser, prefix=()):
    """(argv prefix, subparser) of every runnable subcommand (nested ones such as `report table2`)."""
    for action in parser._actions:
        if getattr(action, "choices", None) and isinstance(action.choices, dict):
            for name, sub in action.choices.items():
                yield from leaf_commands(sub, prefix + (name,))
            return
    yield prefix, parser


def dummy_argv(sub, tmp_path, config_path) -> list[str]:
    """The subcommand's positionals and required options, each given a placeholder (a path, or the first
    choice), and --config."""
    argv = ["--config", str(config_path)]
    for action in sub._actions:
        if not action.option_strings and action.nargs in ("+", None):      # a positional
            argv.append(str(tmp_path / action.dest))
        elif action.required and action.option_strings and action.dest != "config":
            n = action.nargs if isinstance(action.nargs, int) else 1
            if action.choices:
                values = [list(action.choices)[0]] * n
            elif action.type in (int, float):
                values = ["0"] * n
            else:
                values = [str(tmp_path / f"{action.dest}{i}") for i in range(n)]
            argv += [action.option_strings[0], *map(str, values)]
    return argv


def test_every_subcommand_fails_naming_a_missing_config_key(tmp_path, capsys):
    import yaml
    from test_workflow_support import DEFAULT_CONFIG

    full = yaml.safe_load(DEFAULT_CONFIG.read_text())
    del full["train"]["ema_decay"]
    partial = tmp_path / "partial.yaml"
    partial.write_text(yaml.safe_dump(full))
    commands = list(leaf_commands(cli.build_parser()))
    assert len(commands) > 20
    for prefix, sub in commands:
        rc = cli.main([*prefix, *dummy_argv(sub, tmp_path, partial)])
        err = capsys.readouterr().err
        assert rc == 2 and "'train.ema_decay' is missing" in err, (prefix, err[-500:])
