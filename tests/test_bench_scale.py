"""benchmarks/bench_scale.py --paper: its pure parts (benchmark files, log -> job, growth ratio, table,
the train split's mel bytes, the /proc sampler on this process); the pipeline run itself is not a test."""
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("bench_scale", REPO / "benchmarks" / "bench_scale.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)

BENCH_TSV = ("s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
             "12.3456\t0:00:12\t812.50\t4000.10\t700.25\t720.00\t1.00\t2.00\t95.00\t11.50\n")


def test_parse_benchmark_reads_the_last_row_and_na():
    row = bench.parse_benchmark(BENCH_TSV)
    assert row["max_uss"] == 700.25 and row["s"] == 12.3456 and "h:m:s" not in row
    na = bench.parse_benchmark("s\th:m:s\tmax_rss\tmax_uss\n0.4\t0:00:00\tNA\tNA\n")
    assert na["s"] == 0.4 and na["max_uss"] != na["max_uss"]   # NaN
    with pytest.raises(ValueError):
        bench.parse_benchmark("s\th:m:s\n")


def test_read_benchmarks_names_jobs_rule_slash_wildcards(tmp_path):
    (tmp_path / "train_warmup").mkdir()
    (tmp_path / "train_warmup" / "A_seed0.tsv").write_text(BENCH_TSV)
    (tmp_path / "data_merge").mkdir()
    (tmp_path / "data_merge" / "data_merge.tsv").write_text(BENCH_TSV)
    assert set(bench.read_benchmarks(tmp_path)) == {"train_warmup/A_seed0", "data_merge/data_merge"}


def test_job_of_log():
    logs = "/x/results/logs"
    assert bench.job_of_log("/x/results/logs/data_mels_part/part0.log", logs) == "data_mels_part/part0"
    assert bench.job_of_log("/x/results/logs/data_mels_part/part0.log", logs + "/") == "data_mels_part/part0"
    assert bench.job_of_log("pipe:[1234]", logs) is None
    assert bench.job_of_log("/x/results/logs2/a/b.log", logs) is None
    assert bench.job_of_log("/dev/null", logs) is None


def test_growth_rows_ratio_and_flag():
    mib = 2 ** 20
    rows = bench.growth_rows({"a/x": 100 * mib, "b/y": 100 * mib, "only1": 1},
                             {"a/x": 105 * mib, "b/y": 160 * mib, "onlyk": 1}, 10 * mib, 110 * mib)
    by = {r["job"]: r for r in rows}
    assert set(by) == {"a/x", "b/y"}                    # jobs seen at one scale only are not compared
    assert by["a/x"]["ratio"] == pytest.approx(0.05) and not by["a/x"]["over"]
    assert by["b/y"]["growth"] == 60 * mib and by["b/y"]["ratio"] == pytest.approx(0.6) and by["b/y"]["over"]
    table = bench.format_table(rows, 1, 8, 10 * mib, 110 * mib, other={"a/x": (90.0, 91.0)})
    lines = table.splitlines()
    assert "100.0 MiB" in lines[0] and len(lines) == 2 + 2
    assert lines[3].startswith("b/y") and lines[3].endswith("OVER 0.10") and "0.600" in lines[3]
    assert "0.050" in lines[2] and "OVER" not in lines[2] and "91.0" in lines[2]
    with pytest.raises(ValueError):
        bench.growth_rows({}, {}, 5, 5)


def test_train_mel_bytes_counts_train_clips_fp32(tmp_path):
    from agrepa.store import StoreWriter

    (tmp_path / "data").mkdir()
    w = StoreWriter(tmp_path / "data" / "mels", {}, 2)
    for cid, t in (("a", 10), ("b", 7), ("c", 5)):
        w.add(cid, {"mel": torch.zeros(t, 4, dtype=torch.float16)})   # stored half: counted as fp32
    w.close()
    pd.DataFrame({"id": ["a", "b", "c"], "split": ["train", "test", "train"]}).to_csv(
        tmp_path / "data" / "manifest.csv", index=False)
    assert bench.train_mel_bytes(tmp_path) == (10 + 5) * 4 * 4


def test_job_sampler_groups_a_process_tree_by_its_log(tmp_path):
    logs = tmp_path / "logs"
    (logs / "rule").mkdir(parents=True)
    code = "import time; x = bytearray(64 * 2**20); x[::4096] = b'1' * len(x[::4096]); print('ready', flush=True); time.sleep(60)"
    with open(logs / "rule" / "wc.log", "w") as log:   # a "job": stdout on its log, as `> {log}` does
        job = subprocess.Popen([sys.executable, "-c", code], stdout=log)
    try:
        for _ in range(600):
            if (logs / "rule" / "wc.log").read_text().startswith("ready"):
                break
            time.sleep(0.05)
        per_job = bench.JobSampler(os.getpid(), logs).sample()   # this process is no job: its stdout is elsewhere
        assert set(per_job) == {"rule/wc"} and per_job["rule/wc"] > 64 * 2 ** 20
    finally:
        job.kill()
        job.wait()
