"""Warm start (agrepa/warm.py): a job forked from the server writes what the same job writes
in a fresh process; streams, exit codes, the working directory, the environment, thread counts
and signals behave as for a fresh process; without a server `agrepa` runs in its own process.
The workflow side (a whole-DAG run forks its jobs; a cold rerun of a branch equals its warm
run bitwise) is in tests/test_workflow_run.py."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from agrepa import warm
from test_dataset import make_corpus, tiny_cfg
from test_train import _tensors_equal
from test_workflow_support import BIN, DEFAULT_CONFIG


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("warm")
    path, log = root / "socket", root / "server.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "agrepa.warm", str(path)], stdout=err, stderr=err,
                                start_new_session=True)
    deadline = time.monotonic() + 120
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert path.exists(), log.read_text()
    yield path, log
    proc.terminate()
    proc.wait(timeout=30)
    assert not path.exists()                     # the server removes its socket when it stops


def agrepa(args, cwd, socket=None, env=None, **kw):
    full = {k: v for k, v in os.environ.items() if k != warm.SOCKET_ENV} | (env or {})
    if socket is not None:
        full[warm.SOCKET_ENV] = str(socket)
    return subprocess.run([str(BIN / "agrepa"), *args], cwd=cwd, env=full, capture_output=True, text=True, **kw)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("warm_corpus")
    _, cfg_path = tiny_cfg(tmp, {"model": {"dropout": 0.1}})
    paths = make_corpus(tmp / "data")
    args = ["--config", str(DEFAULT_CONFIG), "--config", str(cfg_path), "--manifest", str(paths["manifest"]),
            "--mels", str(paths["mels"]), "--tokens", str(paths["tokens"]), "--semantic", str(paths["semantic"]),
            "--acoustic", str(paths["acoustic"])]
    return tmp, args


def test_a_warm_training_job_equals_a_cold_one_bitwise(server, corpus, tmp_path):
    path, log = server
    _, data = corpus
    train = ["train", "--phase", "warmup", "--steps", "3", "--seed", "0", "--threads", "1", "--out", "run", *data]
    for mode, socket in (("cold", None), ("warm", path)):
        (tmp_path / mode).mkdir()
        r = agrepa(train, tmp_path / mode, socket, env={"OMP_NUM_THREADS": "1"})   # --out is relative to cwd
        assert r.returncode == 0, r.stderr
        assert "INFO agrepa.training" in r.stderr         # the job's log reaches the caller's stderr
    # the job's own peak and CPU time reach its log (Snakemake's benchmark file sees the ~14-MiB client)
    peak = re.search(r"agrepa: warm-started job \(pid \d+\): max_rss ([\d.]+) MiB, cpu ([\d.]+) s", r.stderr)
    assert peak and float(peak.group(1)) > 200 and float(peak.group(2)) > 0.1, r.stderr[-2000:]
    assert f"agrepa train in {tmp_path / 'warm'}" in log.read_text()
    assert f"in {tmp_path / 'cold'}" not in log.read_text()
    cold, hot = (torch.load(tmp_path / m / "run" / "final.pt", map_location="cpu", weights_only=True)
                 for m in ("cold", "warm"))
    for key in ("model", "ema", "bitc", "optimizer", "sampler", "rng"):
        assert _tensors_equal(cold[key], hot[key]), key


def test_streams_and_exit_codes_are_a_fresh_processs(server, tmp_path):
    path, _ = server
    for args in (["--help"], ["select"], ["train", "--config", "missing.yaml", "--phase", "warmup", "--out", "x"],
                 ["no-such-command"]):
        cold, hot = agrepa(args, tmp_path), agrepa(args, tmp_path, path)
        lines = hot.stderr.splitlines(keepends=True)
        assert lines and lines[-1].startswith("agrepa: warm-started job"), hot.stderr   # its resource line, last
        assert (hot.returncode, hot.stdout, "".join(lines[:-1])) == (cold.returncode, cold.stdout, cold.stderr), args
    assert cold.returncode == 2 and "invalid choice" in cold.stderr


def test_without_a_server_agrepa_runs_in_its_own_process(tmp_path):
    r = agrepa(["--help"], tmp_path, socket=tmp_path / "no-server")
    assert r.returncode == 0 and "commands, by stage" in r.stdout


def test_the_jobs_thread_count_is_its_own():
    before = torch.get_num_threads()
    try:
        warm._limit_threads({warm.THREAD_ENV: "1"})
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_a_signal_to_the_caller_reaches_the_job(server, corpus, tmp_path):
    path, log = server
    _, data = corpus
    env = {k: v for k, v in os.environ.items() if k != warm.SOCKET_ENV} | {warm.SOCKET_ENV: str(path)}
    proc = subprocess.Popen([str(BIN / "agrepa"), "train", "--phase", "warmup", "--steps", "100000", "--seed", "0",
                             "--out", "long", *data], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    job = None
    deadline = time.monotonic() + 60
    while job is None and time.monotonic() < deadline:
        lines = [ln for ln in log.read_text().splitlines() if ln.endswith(f"agrepa train in {tmp_path}")]
        job = int(lines[-1].split("pid ")[1].split(":")[0]) if lines else None
        time.sleep(0.2)
    assert job is not None
    time.sleep(2.0)                                    # the job is training now
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == -signal.SIGTERM    # as a fresh process would end
    deadline = time.monotonic() + 10
    while _alive(job) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(job)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"   # a zombie has ended (the server reaps it)
    except FileNotFoundError:
        return False
