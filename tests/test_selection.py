"""Layer selection: top-K by strategy, Eq. 11 weights, ties, errors, determinism."""
import json
import math

import numpy as np
import pandas as pd
import pytest

from agrepa import cli, io
from agrepa.probing.probes import CSV_COLUMNS
from agrepa.probing.selection import layer_scores, random_layers, select, top_k, weights_from_scores
from test_workflow_support import DEFAULT_CONFIG

L = 6
GRID = [0.25, 0.75]


def probes_df(config="A", seed=0):
    """A probes table in the CSV format with known structure:
    FoG-A high in shallow layers (layer 1 > 2 > 3 ...), LASP high in deep ones,
    gradient norm peaking at layer 4; at t=0.75 FoG-A prefers layer 5."""
    rows = []
    for domain in ("speech", "audio"):
        off = 0.0 if domain == "speech" else 0.01
        for t in GRID:
            for l in range(1, L + 1):
                f = 1.0 / l + off
                if t == 0.75 and l == 5:
                    f = 5.0
                rows.append((config, seed, domain, "foga", l, t, f, 0.01, 8))
            for l in range(0, L + 1):
                rows.append((config, seed, domain, "lasp", l, t, -0.2 + 0.1 * l + off, 0.01, 8))
        for l in range(1, L + 1):
            rows.append((config, seed, domain, "gradnorm", l, math.nan, 10.0 - abs(l - 4), 0.1, 8))
    return pd.DataFrame(rows, columns=CSV_COLUMNS)


def test_foga_top_k_and_weights():
    rec = select(probes_df(), "foga", 3, seed=0)
    s = layer_scores(probes_df(), "foga")
    assert rec["sets"]["merged"]["layers"] == [5, 1, 2]          # layer 5 is boosted at t=0.75
    assert math.isclose(sum(rec["sets"]["merged"]["weights"]), 1.0)
    expect = np.array([s[5], s[1], s[2]])
    assert np.allclose(rec["sets"]["merged"]["weights"], expect / expect.sum())
    assert set(rec["sets"]["merged"]["scores"]) == {str(l) for l in range(1, L + 1)}
    assert rec["sets"]["merged"]["weights"] == sorted(rec["sets"]["merged"]["weights"], reverse=True)


def test_foga_at_one_t_and_bad_t():
    assert select(probes_df(), "foga", 2, 0, foga_t=0.25)["sets"]["merged"]["layers"] == [1, 2]
    assert select(probes_df(), "foga", 1, 0, foga_t="0.75")["sets"]["merged"]["layers"] == [5]
    with pytest.raises(ValueError, match="foga_t.*0.5"):
        select(probes_df(), "foga", 2, 0, foga_t=0.5)


def test_lasp_excludes_interface_and_gradnorm_averages_domains():
    rec = select(probes_df(), "lasp", 3, 0)
    assert rec["sets"]["merged"]["layers"] == [6, 5, 4] and "0" not in rec["sets"]["merged"]["scores"]
    g = select(probes_df(), "gradnorm", 3, 0)["sets"]["merged"]
    assert g["layers"] == [4, 3, 5]            # tie 3 vs 5 -> lower layer first
    assert math.isclose(g["scores"]["4"], 10.0)


def test_ties_go_to_lower_layer_and_k_bounds():
    s = pd.Series([1.0, 2.0, 2.0, 2.0], index=[1, 2, 3, 4])
    assert top_k(s, 2) == [2, 3]
    for k in (0, 7):
        with pytest.raises(ValueError, match=f"K={k}.*L=6"):
            select(probes_df(), "foga", k, 0)
    with pytest.raises(ValueError, match="K=9.*L=6"):
        random_layers(6, 9, 0)


def test_non_positive_score_rule():
    assert weights_from_scores([0.6, 0.2, -0.4]) == pytest.approx([0.75, 0.25, 0.0])
    assert weights_from_scores([-0.1, -0.3, 0.0]) == pytest.approx([1 / 3] * 3)
    df = probes_df()
    df.loc[df.probe == "lasp", "score"] -= 5.0       # every cosine negative -> uniform weights
    rec = select(df, "lasp", 3, 0)
    assert rec["sets"]["merged"]["layers"] == [6, 5, 4] and rec["sets"]["merged"]["weights"] == pytest.approx([1 / 3] * 3)
    df.loc[(df.probe == "foga") & (df.layer == 2), "score"] = float("nan")
    with pytest.raises(ValueError, match="non-finite foga score at layer"):
        select(df, "foga", 3, 0)


def test_random_is_seeded_uniform_and_distinct():
    a, b = random_layers(L, 3, seed=1), random_layers(L, 3, seed=1)
    assert a == b and len(set(a)) == 3 and all(1 <= l <= L for l in a)
    draws = {tuple(random_layers(12, 3, seed=s)) for s in range(20)}
    assert len(draws) > 10                          # the seed matters
    rec = select(probes_df(), "random", 3, seed=1)
    assert rec["sets"]["merged"]["layers"] == a and rec["sets"]["merged"]["weights"] == pytest.approx([1 / 3] * 3)


def test_one_run_per_file():
    df = pd.concat([probes_df(seed=0), probes_df(seed=1)])
    with pytest.raises(ValueError, match="2 \\(config, seed\\) runs"):
        select(df, "foga", 3, 0, source="x.csv")


@pytest.mark.parametrize("strategy", ["foga", "lasp", "gradnorm", "random"])
def test_cli_json_is_deterministic_and_weights_sum_to_one(tmp_path, strategy):
    src = tmp_path / "probes.csv"
    io.write_csv(src, probes_df())
    outs = []
    for i in range(2):
        out = tmp_path / f"sel{i}.json"
        assert cli.main(["select", "--config", str(DEFAULT_CONFIG), "--probes", str(src), "--strategy", strategy, "--k", "3",
                         "--seed", "4", "--out", str(out)]) == 0
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    rec = json.loads(outs[0])
    assert rec["strategy"] == strategy and rec["k"] == 3 and rec["seed"] == 4
    assert rec["source"] == str(src) and rec["mode"] == "per_domain"
    for key in ("speech", "audio", "merged"):
        assert len(rec["sets"][key]["layers"]) == 3
        assert math.isclose(sum(rec["sets"][key]["weights"]), 1.0, abs_tol=1e-12)
    # the training stage reads it: each domain its own set
    from agrepa.training.objectives import read_selection
    assert read_selection(tmp_path / "sel0.json", L) == {d: (rec["sets"][d]["layers"], rec["sets"][d]["weights"])
                                                        for d in ("speech", "audio")}


def test_cli_errors_are_clear(tmp_path, capsys):
    rc = cli.main(["select", "--config", str(DEFAULT_CONFIG), "--probes", str(tmp_path / "none.csv"), "--strategy", "foga", "--seed", "0",
                   "--out", str(tmp_path / "s.json")])
    assert rc == 2 and "none.csv: probes CSV not found" in capsys.readouterr().err
    src = tmp_path / "p.csv"
    io.write_csv(src, probes_df())
    rc = cli.main(["select", "--config", str(DEFAULT_CONFIG), "--probes", str(src), "--strategy", "foga", "--k", "8", "--seed", "0",
                   "--out", str(tmp_path / "s.json")])
    assert rc == 2 and "K=8" in capsys.readouterr().err and not (tmp_path / "s.json").exists()
