"""Where the processes of a training job meet: the ``torchrun`` c10d rendezvous endpoint.

A training job of ``resources.train.gpu`` = G processes per node on
``resources.train.nodes`` = M nodes is started (``workflow/rules/train.smk``) as::

    [srun --nodes M --ntasks-per-node 1 --kill-on-bad-exit=1]      # only when M > 1
    torchrun --nnodes M --nproc_per_node G --rdzv-backend c10d \\
             --rdzv-endpoint $(agrepa-rendezvous) --rdzv-id $SLURM_JOB_ID -m agrepa.cli train ...

``srun`` starts one ``torchrun`` per node, and every ``torchrun`` must name the same
endpoint: the job's first node, on a port derived from the job id (two jobs sharing a
node do not collide). The SLURM job step that runs a rule's shell drops the
allocation's ``SLURM_JOB_NODELIST`` (snakemake-executor-plugin-slurm-jobstep keeps
only the job id), so the node list is read back from ``scontrol show job``. Outside
SLURM (a local run) the endpoint is ``localhost:0``: one node, a free port chosen by
the rendezvous, as ``torchrun --standalone`` does.
"""
from __future__ import annotations

import os
import re
import subprocess
from typing import Callable, Mapping

PORT_BASE, PORT_SPAN = 29500, 20000   # ports 29500-49499


def rendezvous_port(job_id: str | int) -> int:
    return PORT_BASE + int(job_id) % PORT_SPAN


def _scontrol(*args: str) -> str:
    return subprocess.run(["scontrol", *args], check=True, capture_output=True, text=True).stdout


def first_node(job_id: str, env: Mapping[str, str], scontrol: Callable[..., str] = _scontrol) -> str:
    """The first host of the job's allocation (SLURM_JOB_NODELIST, else ``scontrol show job``)."""
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodelist:
        m = re.search(r"(?:^|\s)NodeList=(\S+)", scontrol("show", "job", "-o", str(job_id)))
        if not m or m.group(1) in ("", "(null)"):
            raise ValueError(f"SLURM job {job_id}: scontrol show job gives no NodeList")
        nodelist = m.group(1)
    hosts = scontrol("show", "hostnames", nodelist).split()
    if not hosts:
        raise ValueError(f"SLURM job {job_id}: no host in node list {nodelist!r}")
    return hosts[0]


def rendezvous_endpoint(env: Mapping[str, str] | None = None, scontrol: Callable[..., str] = _scontrol) -> str:
    """``host:port`` for ``torchrun --rdzv-endpoint`` (see module doc)."""
    env = os.environ if env is None else env
    job_id = env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID")
    if not job_id:
        return "localhost:0"
    return f"{first_node(job_id, env, scontrol)}:{rendezvous_port(job_id)}"


def main() -> int:
    """``agrepa-rendezvous``: print the endpoint (a console script beside ``agrepa``, so a job
    that finds one finds the other; it imports nothing heavy)."""
    print(rendezvous_endpoint())
    return 0
