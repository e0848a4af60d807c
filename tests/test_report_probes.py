"""Table 1, Figure 1 and the bar plots, made only from probes CSVs."""
import math

import pandas as pd
import pytest

from agrepa import io
from agrepa.probing.records import CSV_COLUMNS
from agrepa.reports.probes import figure1, heatmap_matrix, probe_bars, table1, table1_long

L, GRID = 8, [0.1, 0.5, 0.9]


def run_csv(tmp_path, config, seed, swap=False):
    """One run's probes CSV: FoG-A shallow (1 > 2 > 3 > ...), LASP deep (8 > 7 > 6 > ...), the
    interface (LASP layer 0) highest of all. ``swap``: in this seed FoG-A speech ranks layer 4 third."""
    rows = []
    for domain in ("speech", "audio"):
        for t in GRID:
            for l in range(1, L + 1):
                f = 1.0 / l
                if swap and domain == "speech" and l == 4:
                    f = 0.4
                rows.append((config, seed, domain, "foga", l, t, f + 0.01 * seed, 0.0, 8))
            for l in range(0, L + 1):
                c = 0.99 if l == 0 else 0.1 * l
                rows.append((config, seed, domain, "lasp", l, t, c, 0.0, 8))
        for l in range(1, L + 1):
            rows.append((config, seed, domain, "gradnorm", l, math.nan, float(l % 3), 0.0, 8))
    path = tmp_path / f"{config}_s{seed}.csv"
    io.write_csv(path, pd.DataFrame(rows, columns=CSV_COLUMNS))
    return path


@pytest.fixture
def csvs(tmp_path):
    return [run_csv(tmp_path, "A", 0), run_csv(tmp_path, "A", 1), run_csv(tmp_path, "A", 2, swap=True),
            run_csv(tmp_path, "B", 0)]


def test_table1_top3_with_seed_consistency(csvs):
    t = table1(csvs)
    assert list(t["config"]) == ["A", "B"]
    a = t.set_index("config").loc["A"]
    assert a["Cos-SEM (top3)"] == "L8 (3/3) L7 (3/3) L6 (3/3)"      # interface left out
    assert a["Cos-EVT (top3)"] == "L8 (3/3) L7 (3/3) L6 (3/3)"
    assert a["FoG-A Speech (top3)"] == "L1 (3/3) L2 (3/3) L3 (2/3)"  # seed 2 has L4 third
    assert a["FoG-A Audio (top3)"] == "L1 (3/3) L2 (3/3) L3 (3/3)"
    assert a["seeds"] == "0 1 2" and a["n_seeds"] == 3
    assert t.set_index("config").loc["B", "n_seeds"] == 1
    with_in = table1(csvs, include_interface=True).set_index("config")
    assert with_in.loc["A", "Cos-SEM (top3)"].startswith("L0 (3/3)")


def test_table1_long_per_seed_detail(csvs):
    long = table1_long(csvs)
    row = long[(long.config == "A") & (long.metric == "FoG-A Speech") & (long["rank"] == 3)].iloc[0]
    assert row.layer == 3 and row.in_topk == 2 and row.n_seeds == 3
    assert "s2: 1 2 4" in row.per_seed_topk
    assert math.isclose(row.score, (1 / 3 + 1 / 3 + 0.01 + 1 / 3 + 0.02) / 3)


def test_figure1_and_bars_from_csv_only(csvs, tmp_path):
    out = figure1(csvs[:3], tmp_path / "fig" / "figure1.png")
    assert out.exists() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pdf = figure1(pd.concat([pd.read_csv(p) for p in csvs]), tmp_path / "f.pdf", config="B")
    assert pdf.read_bytes()[:4] == b"%PDF"
    bars = probe_bars(csvs[:3], tmp_path / "bars.png")
    assert bars.stat().st_size > 1000
    with pytest.raises(ValueError, match="configs"):
        figure1(csvs, tmp_path / "x.png")               # two configs and none chosen
    assert not (tmp_path / "x.png").exists()


def test_heatmap_matrix_shape(csvs):
    df = pd.read_csv(csvs[0])
    m = heatmap_matrix(df, "lasp", "speech")
    assert list(m.index) == list(range(L, -1, -1)) and list(m.columns) == GRID
    assert math.isclose(m.loc[0, 0.5], 0.99)
