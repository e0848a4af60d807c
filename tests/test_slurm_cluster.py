"""The SLURM profile on a real cluster (`.ci/slurm-up`: one node, Debian's slurm-wlm, no
accounting database, a count-only `gpu` GRES).

One `snakemake --profile slurm results/table2.csv` run of a slice of the rehearsal of the
paper path (config/paper.yaml + config/rehearsal.yaml over `agrepa fixtures paper`: data ->
teachers -> tokens -> warm-up -> one branch -> held-out loss, sample -> evaluate -> Table 2 for
that branch), every rule but the local report rules a SLURM job. Its warm-up trains with two processes (`resources.train.gpu: 2`:
`--gpus=2`, torchrun) and is interrupted twice while it runs: `scontrol requeue` (SLURM
restarts the same job) and then `scancel` (the job fails; Snakemake submits attempt 2).
Both times training resumes from last.pt, and the final checkpoint equals an uninterrupted
run of the rule's command bitwise; the two-process run equals a one-process run of the
rule's command at equal global batch.

CI (`.ci/run`) starts the cluster and sets AGREPA_SLURM_TESTS=1: these tests then fail
when there is no cluster. Elsewhere they run when `sinfo` answers (after
`sudo .ci/slurm-up`) and are skipped, with the reason, when it does not.
"""
from __future__ import annotations

import io
import json
import math
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from test_train import _tensors_equal
from test_workflow_support import BIN, copy_workflow

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

REQUIRED_ENV = "AGREPA_SLURM_TESTS"
WARMUP_STEPS, CHECKPOINT_EVERY = 120, 10
# The rehearsal's epoch: 2 x 21 LibriSpeech train utterances (epoch_size: balanced) at batch 2,
# 21 steps; ceil(5.71 x 21) = 120 steps (test_warmup_length checks it against length.json)
WARMUP_EPOCHS = 5.71
# Over the rehearsal, SLICE: one seed, token config A, Table 2 = the baseline row, a warm-up
# long enough to be interrupted twice, small jobs.
CPU_JOB = {"threads": 1, "mem_mb": 1000, "runtime": 60, "gpu": 0}
SLICE = {
    "device": "cpu",
    "seeds": [0],
    "token_configs": ["A"],
    "branch_token_configs": ["A"],
    "report": {"table2": {"methods": ["baseline"]}},
    "model": {"dropout": 0.0},          # one process = two processes needs no dropout (per-rank RNG)
    # 1.5 s crops (config/test.yaml's; paper.yaml trains on 10 s windows, ~10x the step time, which
    # the local rehearsal runs): 120 steps leave room for two interruptions at a CI-sized cost
    "train": {"warmup_epochs": WARMUP_EPOCHS, "checkpoint_every": CHECKPOINT_EVERY, "log_every": CHECKPOINT_EVERY,
              "crop_seconds": 1.5},
    # one CPU per job (two jobs at a time on a 2-CPU node); sampling and evaluation ask for a
    # GPU and training for two, as GPU rules do in config/paper.yaml
    "resources": {**{g: CPU_JOB for g in ("default", "data", "teacher_train", "teacher_embed", "tokens", "probe",
                                          "report")},
                  "sample": {**CPU_JOB, "gpu": 1}, "evaluate": {**CPU_JOB, "gpu": 1}, "train": {**CPU_JOB, "gpu": 2}},
}
# The data, teacher and token rules run as one SLURM job (a Snakemake group): a chain of
# short jobs costs one status-check interval (>= 12 s with the plugin's back-off) each.
PREP = ["data_corpus", "data_merge", "data_mels_part", "data_mels", "teacher_embed_part", "teacher_embed", "tokens_fit",
        "tokens_encode_part", "tokens_encode", "evaluate_reference"]
WARMUP_DIR = "results/runs/A/seed0/warmup"
WARMUP_LOG = "results/logs/train_warmup/A_seed0.log"
# the whole slice, seconds (275 s on a 2-core machine at load ~3, of which the prep group 106 s)
TIMEOUT = int(os.environ.get("AGREPA_SLURM_TEST_TIMEOUT", "1200"))
# scancel -> the retry's submission: the plugin checks job states at growing intervals,
# 1 s (the profile's initial interval, set below) + 10 s per check without news, at most 180 s
RETRY_BOUND = 200


def _run(cmd: list[str], timeout: int = 30) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def cluster_problem() -> str | None:
    """Why there is no usable SLURM cluster here, or None."""
    try:
        r = _run(["sinfo", "-h", "-o", "%t %G"])
    except FileNotFoundError:
        return "sinfo is not installed"
    except subprocess.TimeoutExpired:
        return "sinfo timed out"
    if r.returncode != 0:
        return f"sinfo failed: {r.stderr.strip()}"
    if not any(line.split()[0] in ("idle", "mix", "alloc") for line in r.stdout.splitlines() if line.strip()):
        return f"no node takes jobs: {r.stdout.strip()!r}"
    return None


@pytest.fixture(scope="module")
def cluster():
    problem = cluster_problem()
    if problem is not None:
        if os.environ.get(REQUIRED_ENV) == "1":
            pytest.fail(f"{REQUIRED_ENV}=1 but there is no SLURM cluster: {problem} (.ci/slurm-up starts one)")
        pytest.skip(f"no SLURM cluster ({problem}); start one with `sudo .ci/slurm-up`")


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def _step(last: Path) -> int:
    """Step of a checkpoint written (atomically) by a running job; -1 while there is none."""
    try:
        data = last.read_bytes()
    except FileNotFoundError:
        return -1
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)["step"]


@dataclass
class SliceRun:
    root: Path
    rc: int = -1
    output: str = ""
    seconds: float = 0.0
    warmup_jobs: list = field(default_factory=list)   # SLURM job ids of the warm-up, in submission order
    job_info: str = ""                                # `scontrol show job` of the running warm-up
    requeued_at: int = -1                             # last.pt step when it was requeued
    log_after_requeue: str = ""
    cancelled_at: int = -1                            # last.pt step when it was cancelled
    retry_after: float = -1.0                         # seconds from scancel to the retry's submission
    events: list = field(default_factory=list)


class Watcher:
    """Follows the run's output and interrupts the warm-up: requeue, then scancel."""

    def __init__(self, run: SliceRun, out_path: Path):
        self.run, self.out_path = run, out_path
        self.last = run.root / WARMUP_DIR / "last.pt"
        self.log = run.root / WARMUP_LOG
        self.phase, self.t_cancel = "requeue", 0.0

    def jobs(self) -> list[str]:
        text = self.out_path.read_text()
        return re.findall(r"submitted with SLURM jobid (\d+) \(log: [^)]*/rule_train_warmup/", text)

    def poll(self) -> None:
        r, jobs = self.run, self.jobs()
        step = _step(self.last)
        if self.phase == "requeue" and jobs and step >= CHECKPOINT_EVERY:
            r.job_info = _run(["scontrol", "show", "job", jobs[0]]).stdout
            r.requeued_at = step
            subprocess.run(["scontrol", "requeue", jobs[0]], check=True)
            r.events.append(f"requeued job {jobs[0]} at step {step}")
            self.phase = "release"
        elif self.phase == "release" and _run(["squeue", "-h", "-j", jobs[0], "-o", "%T"]).stdout.strip() == "PENDING":
            # SLURM holds a requeued job for 2 min (its begin time, set once the job has left the
            # node: an update before that is overwritten); let it start at once
            subprocess.run(["scontrol", "update", f"JobId={jobs[0]}", "StartTime=now"], check=True)
            r.events.append(f"released job {jobs[0]}")
            self.phase = "cancel"
        elif self.phase == "cancel" and step > r.requeued_at and "resuming" in _text(self.log):
            r.log_after_requeue = self.log.read_text()
            r.cancelled_at = step
            subprocess.run(["scancel", jobs[0]], check=True)
            self.t_cancel = time.time()
            r.events.append(f"cancelled job {jobs[0]} at step {step}")
            self.phase = "retry"
        elif self.phase == "retry" and len(jobs) > 1:
            r.retry_after = time.time() - self.t_cancel
            r.events.append(f"retry submitted as job {jobs[1]} after {r.retry_after:.1f} s")
            self.phase = "done"


@pytest.fixture(scope="module")
def slice_run(cluster, tmp_path_factory, paper_fixtures) -> SliceRun:
    root = copy_workflow(tmp_path_factory.mktemp("slurm"))
    (root / "results" / "fixtures").mkdir(parents=True)
    os.symlink(paper_fixtures, root / "results" / "fixtures" / "paper")   # as tests/test_rehearsal.py
    (root / "slice.yaml").write_text(yaml.safe_dump(SLICE))
    # the target first: --configfile takes every word that follows it
    cmd = [str(BIN / "snakemake"), "--profile", "slurm", "results/table2.csv", "--configfile",
           "config/paper.yaml", "config/rehearsal.yaml", "slice.yaml", "--slurm-init-seconds-before-status-checks", "1", "--latency-wait", "5",
           "--groups", *(f"{rule}=prep" for rule in PREP), "--cores", "2"]
    env = dict(os.environ, PATH=os.pathsep.join([str(BIN), os.environ["PATH"]]))
    env.pop("AGREPA_SKIP_PATH_CHECK", None)
    run = SliceRun(root)
    out_path = root / "snakemake.out"
    watcher = Watcher(run, out_path)
    t0 = time.time()
    with open(out_path, "w") as out:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            while proc.poll() is None and time.time() - t0 < TIMEOUT:
                watcher.poll()
                time.sleep(0.2)
        finally:
            if proc.poll() is None:              # timed out: Snakemake cancels its jobs on SIGINT
                proc.send_signal(signal.SIGINT)
                proc.wait(timeout=120)
    run.rc, run.seconds = proc.returncode, time.time() - t0
    run.output = out_path.read_text()
    run.warmup_jobs = watcher.jobs()
    print(f"slice on SLURM: {run.seconds:.0f} s; " + "; ".join(run.events))
    return run


def _fail_text(run: SliceRun) -> str:
    logs = "\n".join(f"--- {p}\n{p.read_text()[-2000:]}" for p in sorted((run.root / "results" / "logs").rglob("*.log")))
    return f"events: {run.events}\n{run.output[-6000:]}\n{logs[-8000:]}"


def test_slice_runs_to_the_end_on_a_cluster_without_accounting(slice_run):
    run = slice_run
    assert run.rc == 0, _fail_text(run)
    sacct = _run(["sacct", "-X"])
    assert sacct.returncode != 0 and "accounting storage is disabled" in sacct.stdout + sacct.stderr
    t2 = pd.read_csv(run.root / "results" / "table2.csv")
    assert list(t2["method"]) == ["baseline", "reference"]
    # every rule but the local report rules ran in a SLURM job: the prep group, then one job per rule
    submitted = re.findall(r"has been submitted with SLURM jobid \d+ \(log: [^)]*/slurm_logs/(rule|group)_([a-z]+(?:_[a-z]+)*)",
                           run.output)
    assert ("group", "prep") in [(kind, name.split("_")[0]) for kind, name in submitted], submitted
    assert {("rule", r) for r in ("train_warmup", "train_branch", "sample", "evaluate")} <= set(submitted), submitted


def test_warmup_length(slice_run):
    length = json.loads((slice_run.root / WARMUP_DIR / "length.json").read_text())
    assert length["warmup_steps"] == WARMUP_STEPS, length


def test_gpu_requests_are_accepted_and_training_gets_one_process_per_gpu(slice_run):
    info = slice_run.job_info
    assert "gres/gpu=2" in info or "gpu:2" in info, info
    assert re.search(r"NumCPUs=2\b", info), info        # 2 processes x resources.train.threads (1)
    log = (slice_run.root / WARMUP_LOG).read_text()
    assert "rank 1/2 joined the gloo process group" in log
    # through the multi-node launch path (resources.train.nodes: 1): a torchrun c10d rendezvous at
    # the job's first node, found by `scontrol show job` inside the job (agrepa.training.launch)
    assert "torchrun --nnodes 1 --nproc_per_node 2 --rdzv-backend c10d" in slice_run.output


def _resumed_at(log: str) -> int:
    """The step a training log says it resumed from (train.py: "resuming M from LAST at step S/N")."""
    steps = set(re.findall(rf"resuming warmup from {WARMUP_DIR}/last.pt at step (\d+)/{WARMUP_STEPS}\b", log))
    assert len(steps) == 1, log                          # one line per process, the same step
    return int(steps.pop())


def test_requeued_training_job_resumes_from_last_pt(slice_run):
    run = slice_run
    job = run.warmup_jobs[0]
    assert run.requeued_at >= CHECKPOINT_EVERY, _fail_text(run)
    log = run.log_after_requeue
    assert f"SLURM job {job} was requeued: resuming from {WARMUP_DIR}/last.pt" in log, log
    # the checkpoint seen when requeueing, or one written before the kill arrived
    step = _resumed_at(log)
    assert run.requeued_at <= step < WARMUP_STEPS and step % CHECKPOINT_EVERY == 0, log


def test_cancelled_training_job_is_retried_and_resumes(slice_run):
    run = slice_run
    assert run.cancelled_at > run.requeued_at, _fail_text(run)
    assert len(run.warmup_jobs) == 2, run.warmup_jobs            # the cancelled job and its retry
    assert f"SLURM-job '{run.warmup_jobs[0]}' failed, SLURM status is: 'CANCELLED'" in run.output
    assert 0 <= run.retry_after <= RETRY_BOUND, run.events
    log = (run.root / WARMUP_LOG).read_text()
    assert f"attempt 2: Snakemake retries an interrupted job: resuming from {WARMUP_DIR}/last.pt" in log, log
    assert run.cancelled_at <= _resumed_at(log) < WARMUP_STEPS, log


def _warmup_command(run: SliceRun, out: str, log: str) -> str:
    """The warm-up rule's shell command as Snakemake ran it, writing to another directory."""
    cmd = next(line.split("Shell command: ", 1)[1] for line in run.output.splitlines()
               if line.startswith("Shell command: ") and "--phase warmup" in line)
    assert f"--out {WARMUP_DIR} " in cmd and f"> {WARMUP_LOG} " in cmd, cmd
    return cmd.replace(f"--out {WARMUP_DIR} ", f"--out {out} ").replace(f"> {WARMUP_LOG} ", f"> {log} ")


@pytest.fixture(scope="module")
def references(slice_run):
    """Uninterrupted runs of the warm-up rule's command, here: as written (two processes) and
    with `agrepa train` (what the rule runs for resources.train.gpu: 1)."""
    run = slice_run
    assert run.rc == 0, _fail_text(run)
    two = _warmup_command(run, "ref/two", "ref/two.log")
    launcher = re.match(r"OMP_NUM_THREADS=1 torchrun --nnodes 1 --nproc_per_node 2 --rdzv-backend c10d "
                        r"--rdzv-endpoint \$\(agrepa-rendezvous\) "
                        r"--rdzv-id \$\{SLURM_JOB_ID:-agrepa\} -m agrepa\.cli train ", two)
    assert launcher, two               # outside SLURM the endpoint is localhost:0 (agrepa.training.launch)
    one = "agrepa train " + two[launcher.end():].replace("ref/two", "ref/one")
    env = dict(os.environ, PATH=os.pathsep.join([str(BIN), os.environ["PATH"]]), OMP_NUM_THREADS="1")
    (run.root / "ref").mkdir(exist_ok=True)
    for cmd in (two, one):
        r = subprocess.run(["bash", "-c", cmd], cwd=run.root, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, cmd + "\n" + "".join(p.read_text()[-3000:] for p in (run.root / "ref").glob("*.log"))
    return run.root / "ref"


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_interrupted_training_equals_an_uninterrupted_run_bitwise(slice_run, references):
    a, b = _load(references / "two" / "final.pt"), _load(slice_run.root / WARMUP_DIR / "final.pt")
    assert a["step"] == b["step"] == WARMUP_STEPS and a["world_size"] == b["world_size"] == 2
    for key in ("model", "ema", "bitc", "repa", "optimizer", "scheduler", "sampler", "rng"):
        assert _tensors_equal(a[key], b[key]), key
    timeless = [[{k: None if isinstance(v, float) and math.isnan(v) else v         # repa: NaN for the warm-up
                  for k, v in row.items() if k != "samples_per_s"} for row in ck["metrics"]] for ck in (a, b)]
    assert timeless[0] == timeless[1]                   # the loss curve, restored across both interruptions


def test_two_processes_equal_one_process_at_equal_global_batch(references):
    one, two = pd.read_csv(references / "one" / "metrics.csv"), pd.read_csv(references / "two" / "metrics.csv")
    assert one["step"].tolist() == two["step"].tolist() == list(range(CHECKPOINT_EVERY, WARMUP_STEPS + 1,
                                                                       CHECKPOINT_EVERY))
    for col in ("loss", "fm", "bitc", "grad_norm"):     # tolerance of tests/test_train_distributed.py
        assert ((one[col] - two[col]).abs() <= 1e-5 * one[col].abs()).all(), (col, one[col], two[col])
