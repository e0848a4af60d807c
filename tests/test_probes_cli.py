"""End to end on a tiny real warm-up run: agrepa probe -> agrepa select -> Table 1 / Figure 1."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from agrepa.training import train
from agrepa.cli import main as cli_main
from agrepa.probing.probes import CSV_COLUMNS
from agrepa.reports.probes import figure1, table1
from test_dataset import data_paths, make_corpus, tiny_cfg
from test_workflow_support import DEFAULT_CONFIG

torch.set_num_threads(1)
GRID = [0.3, 0.8]


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("probe")
    cfg, cfg_path = tiny_cfg(tmp, {"model": {"n_layers": 3},
                                   "probe": {"t_grid": GRID, "n_clips": 4, "batch_size": 2}})
    paths = make_corpus(tmp / "data")
    ckpt = train.run(cfg, phase="warmup", out=tmp / "warm", seed=0, data=data_paths(paths))
    return tmp, cfg_path, paths, ckpt


def probe_args(cfg_path, paths, ckpt, out, *extra):
    return [
        "probe", "--config", _default(), "--config", str(cfg_path), "--ckpt", str(ckpt),
        "--manifest", str(paths["manifest"]), "--mels", str(paths["mels"]), "--tokens", str(paths["tokens"]),
        "--semantic", str(paths["semantic"]), "--acoustic", str(paths["acoustic"]), "--out", str(out), *extra]


def _default():
    return str(DEFAULT_CONFIG)


def test_probe_cli_csv_then_select_and_report(warm):
    tmp, cfg_path, paths, ckpt = warm
    out = tmp / "probes" / "probes.csv"
    assert cli_main(probe_args(cfg_path, paths, ckpt, out, "--token-config", "A", "--seed", "0")) == 0
    df = pd.read_csv(out)
    assert list(df.columns) == CSV_COLUMNS
    assert set(df["probe"]) == {"foga", "lasp", "gradnorm"} and set(df["domain"]) == {"speech", "audio"}
    assert (df["config"] == "A").all() and (df["seed"] == 0).all()
    foga = df[df.probe == "foga"]
    assert sorted(foga.layer.unique()) == [1, 2, 3] and sorted(foga.t.unique()) == GRID
    assert sorted(df[df.probe == "lasp"].layer.unique()) == [0, 1, 2, 3]
    assert (foga.score > 0).all() and df[df.probe == "lasp"].score.between(-1, 1).all()
    assert (df[df.probe == "gradnorm"].score > 0).all()
    assert (df["n"] == 4).all() and df["spread"].notna().all()           # 2 batches of 2 per domain
    # deterministic: a second run writes the same CSV
    again = tmp / "probes" / "again.csv"
    assert cli_main(probe_args(cfg_path, paths, ckpt, again, "--token-config", "A")) == 0
    assert out.read_bytes() == again.read_bytes()
    # selection for every strategy, read back the way training reads it
    from agrepa.training.objectives import read_selection
    for strategy in ("foga", "lasp", "gradnorm", "random"):
        sel = tmp / "sel" / f"{strategy}.json"
        assert cli_main(["select", "--config", _default(), "--config", str(cfg_path), "--probes", str(out),
                         "--strategy", strategy, "--k", "2", "--seed", "0", "--out", str(sel)]) == 0
        rec = json.loads(sel.read_text())
        assert rec["strategy"] == strategy and rec["source"] == str(out)
        sets = read_selection(sel, 3)
        assert rec["mode"] == "per_domain" and set(sets) == {"speech", "audio"}
        for d, (layers, weights) in sets.items():
            assert layers == rec["sets"][d]["layers"] and len(layers) == 2 and math.isclose(sum(weights), 1.0)
    # reports from the CSV only
    t1 = table1([out])
    assert t1.loc[0, "config"] == "A" and t1.loc[0, "FoG-A Speech (top3)"].count("(1/1)") == 3
    assert figure1(out, tmp / "fig1.png").stat().st_size > 1000


def test_probe_cli_errors(warm, capsys):
    tmp, cfg_path, paths, ckpt = warm
    rc = cli_main(probe_args(cfg_path, paths, tmp / "missing.pt", tmp / "p.csv"))
    assert rc == 2 and "missing.pt: checkpoint not found" in capsys.readouterr().err
    rc = cli_main(probe_args(cfg_path, paths, ckpt, tmp / "p.csv", "--probes", "foga,bogus"))
    assert rc == 2 and "bogus" in capsys.readouterr().err
    assert not (tmp / "p.csv").exists()
    # the token config name defaults to the token store's directory name
    out = tmp / "only_foga.csv"
    assert cli_main(probe_args(cfg_path, paths, ckpt, out, "--probes", "foga")) == 0
    df = pd.read_csv(out)
    assert set(df.probe) == {"foga"} and (df.config == "tokens").all() and (df.seed == 0).all()


def test_probe_cli_rejects_a_bad_t_grid(warm, capsys):
    tmp, cfg_path, paths, ckpt = warm
    rc = cli_main(probe_args(cfg_path, paths, ckpt, tmp / "bad.csv", "--set", "probe.t_grid=[0.5, 0.5]"))
    assert rc == 2 and "probe.t_grid" in capsys.readouterr().err and not (tmp / "bad.csv").exists()
