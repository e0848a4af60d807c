"""The SLURM profile: `snakemake --profile slurm results/table2.csv` from the repository
root plans the paper's grid; with fake sbatch/sacct/squeue/scontrol/sinfo on PATH it
submits jobs with the GPU, memory and time flags from config/paper.yaml.

The fake cluster stays for what the real one (tests/test_slurm_cluster.py, a 2-CPU node)
cannot take: config/paper.yaml's own requests (64 GB, 48 h, a GPU) and their growth on
retries."""
import os
import stat
from pathlib import Path

import pytest
import yaml

from test_workflow_support import REPO, copy_workflow, job_counts, snakemake

SKIP = {"AGREPA_SKIP_PATH_CHECK": "1"}


def test_profile_is_found_by_name_from_the_repo_root():
    link = REPO / "slurm"
    assert link.is_symlink() and link.resolve() == (REPO / "profiles" / "slurm").resolve()
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    assert profile["executor"] == "slurm"
    assert profile["configfile"] == ["config/paper.yaml"]
    assert profile["retries"] >= 1 and profile["slurm-requeue"] is True
    assert profile["slurm-status-command"] == "squeue"     # README: why not sacct


@pytest.fixture(scope="module")
def wf(tmp_path_factory):
    return copy_workflow(tmp_path_factory.mktemp("wf"))


def test_profile_dry_run_plans_paper_grid_with_shared_warmups(wf):
    paper = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    n_cfg, n_seed = len(paper["token_configs"]), len(paper["seeds"])
    assert (n_cfg, n_seed) == (2, 3)
    # Table 2 alone: its 8 methods x 3 seeds x configs, nothing else trained
    r2 = snakemake(["--profile", "slurm", "-n", "results/table2.csv"], wf, env=SKIP)
    assert r2.returncode == 0, r2.stdout + r2.stderr
    c2 = job_counts(r2.stdout)
    assert c2["train_branch"] == 8 * n_cfg * n_seed and c2["select"] == n_cfg * n_seed  # foga only
    r = snakemake(["--profile", "slurm", "-n", "results/table2.csv", "results/table3.csv"], wf, env=SKIP)
    assert r.returncode == 0, r.stdout + r.stderr
    c = job_counts(r.stdout)
    # one warm-up (and one probe run) per token config x seed, shared by every branch
    assert c["train_warmup"] == c["probe"] == n_cfg * n_seed
    # Table 2's 8 methods + Table 3's random / LASP / gradient-norm controls (FoG-A = AG-REPA)
    assert c["train_branch"] == (8 + 3) * n_cfg * n_seed
    assert c["sample"] == c["evaluate"] == c["train_branch"]
    assert c["select"] == 4 * n_cfg * n_seed
    assert c["data_corpus"] == 2 and c["data_merge"] == 1
    assert "teacher_train" not in c                      # BEATs is a checkpoint at paper scale
    assert c["tokens_fit"] == 3 and c["tokens_encode"] == 2
    # Table 3 also plans the convergence curves of its five rows
    r3 = snakemake(["--profile", "slurm", "-n", "results/table3.csv"], wf, env=SKIP)
    assert job_counts(r3.stdout)["convergence"] == 5 * n_cfg * n_seed


def test_paper_dry_run_plans_the_table4_grid(wf):
    paper = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    n_seed = len(paper["report"]["table4"]["seeds"])
    assert n_seed == 3
    r = snakemake(["--profile", "slurm", "-n", "-p", "results/table4.csv"], wf, env=SKIP)
    assert r.returncode == 0, r.stdout + r.stderr
    c = job_counts(r.stdout)
    # three other backbones, config A: a warm-up, probes, the FoG-A selection, baseline + AG-REPA
    assert c["train_warmup_arch"] == c["probe_arch"] == c["select_arch"] == 3 * n_seed
    assert c["train_branch_arch"] == c["sample_arch"] == c["evaluate_arch"] == 3 * 2 * n_seed
    # the DiT row is Table 2's baseline and AG-REPA runs of config A
    assert c["train_warmup"] == c["probe"] == c["select"] == n_seed and c["train_branch"] == 2 * n_seed
    assert c["report_table4"] == 1
    warmups = [line for line in r.stdout.splitlines() if "agrepa train" in line and "--phase warmup" in line]
    for arch in ("voicebox", "cosyvoice", "f5"):
        assert sum(f"--set model.arch={arch} " in line for line in warmups) == n_seed, arch


def test_multi_node_training_is_srun_starting_torchrun_on_every_node(wf, tmp_path):
    """resources.train.nodes: 2 (4 GPUs each): one task per node, 4 GPUs per node (gres), the
    rule's shell once on the first node (mpi), srun starting torchrun with a c10d rendezvous."""
    (tmp_path / "nodes.yaml").write_text("resources: {train: {gpu: 4, nodes: 2, threads: 8}}\n")
    r = snakemake(["--profile", "slurm", "-n", "-p", "results/runs/A/seed0/warmup/final.pt",
                   "--configfile", "config/paper.yaml", str(tmp_path / "nodes.yaml")], wf, env=SKIP)
    assert r.returncode == 0, r.stdout + r.stderr
    line = next(x for x in r.stdout.splitlines() if "--phase warmup" in x).split("Shell command: ", 1)[-1]
    assert line.startswith("OMP_NUM_THREADS=8 srun --nodes 2 --ntasks-per-node 1 --kill-on-bad-exit=1 "
                                    "torchrun --nnodes 2 --nproc_per_node 4 --rdzv-backend c10d "
                                    "--rdzv-endpoint $(agrepa-rendezvous) "
                                    "--rdzv-id ${SLURM_JOB_ID:-agrepa} -m agrepa.cli train "), line
    block = r.stdout[r.stdout.index("rule train_warmup:"):]
    block = block[:block.index("\n\n")]
    for key in ("nodes=2", "tasks=2", "tasks_per_gpu=0", "mpi=srun", "gres=gpu:4"):
        assert key in block, block
    assert "gpu=" not in block.replace("tasks_per_gpu=", ""), block     # --gpus would count the whole job's


def test_rendezvous_endpoint_is_the_jobs_first_node():
    from agrepa.training.launch import rendezvous_endpoint

    calls = []

    def scontrol(*args):
        calls.append(args)
        if args[:2] == ("show", "job"):
            return "JobId=12345 JobName=x NodeList=gpu[07-08] BatchHost=gpu07 NumNodes=2\n"
        assert args == ("show", "hostnames", "gpu[07-08]")
        return "gpu07\ngpu08\n"

    assert rendezvous_endpoint({"SLURM_JOB_ID": "12345"}, scontrol) == "gpu07:41845"   # 29500 + 12345
    assert calls[0] == ("show", "job", "-o", "12345")
    assert rendezvous_endpoint({"SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "gpu[07-08]"}, scontrol) == "gpu07:29507"
    assert rendezvous_endpoint({}, scontrol) == "localhost:0"
    with pytest.raises(ValueError, match="SLURM job 9: scontrol show job gives no NodeList"):
        rendezvous_endpoint({"SLURM_JOB_ID": "9"}, lambda *a: "JobId=9 JobState=PENDING\n")


FAKE = {
    # log the arguments and answer like `sbatch --parsable`: a job id
    "sbatch": 'n=$(( $(cat "$FAKE_SLURM_DIR/sbatch.log" 2>/dev/null | wc -l) + 1000 ))\n'
              'printf "%s\\n" "$*" >> "$FAKE_SLURM_DIR/sbatch.log"\necho "$n"\n',
    # account guess: none
    "sacct": 'printf "%s\\n" "$*" >> "$FAKE_SLURM_DIR/sacct.log"\necho none\n',
    # status query (the profile's squeue): every submitted job has FAILED, so retries happen at once
    "squeue": 'printf "%s\\n" "$*" >> "$FAKE_SLURM_DIR/squeue.log"\n'
              'i=1000; while read -r l; do echo "$i|FAILED"; i=$((i+1)); done < "$FAKE_SLURM_DIR/sbatch.log"\n',
    "scontrol": 'echo "MinJobAge               = 300 sec"\n',
    "sinfo": 'printf "PARTITION\\ngpu*\\n"\n',
}


@pytest.mark.slow
def test_fake_slurm_submission_has_gpu_memory_time_and_retries(tmp_path):
    wf = copy_workflow(tmp_path / "wf")      # its own copy: the empty inputs below would change the dry runs' plans
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in FAKE.items():
        p = bin_dir / name
        p.write_text("#!/bin/sh\n" + body)
        p.chmod(p.stat().st_mode | stat.S_IEXEC)
    # the warm-up's inputs exist, so the warm-up is the one job to submit
    res = wf / "results"
    for rel in ("data/librispeech/manifest.csv", "data/audioset/manifest.csv", "data/manifest.csv",
                "data/mels/index.json", "embeddings/semantic/index.json", "embeddings/acoustic/index.json",
                "tokens/models/speech/model", "tokens/models/audio/model", "tokens/A/index.json"):
        (res / rel).parent.mkdir(parents=True, exist_ok=True)
        (res / rel).write_text("")
    r = snakemake(["--profile", "slurm", "--rerun-triggers", "mtime", "--retries", "1", "--latency-wait", "1",
                   "--slurm-init-seconds-before-status-checks", "1", "results/runs/A/seed0/warmup/final.pt"],
                  wf, env={**SKIP, "FAKE_SLURM_DIR": str(tmp_path)}, path_prefix=[bin_dir], timeout=300)
    assert r.returncode != 0                                 # the fake cluster fails every job
    calls = (tmp_path / "sbatch.log").read_text().splitlines()
    assert len(calls) == 2                                   # first attempt + one retry
    paper = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())["resources"]["train"]
    for attempt, call in enumerate(calls, start=1):
        args = call.split()
        assert "rule_train_warmup_wildcards_A_0" in call
        assert f"--gpus={paper['gpu']}" in args
        assert args[args.index("-t") + 1] == str(paper["runtime"])
        assert args[args.index("--mem") + 1] == str(paper["mem_mb"] * attempt)   # more memory on retry
        assert f"--cpus-per-task={paper['threads']}" in args
        assert "--requeue" in args
        assert f"--attempt {attempt}" in call
        assert "config/paper.yaml" in call
