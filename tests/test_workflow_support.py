"""Helpers shared by the workflow tests (no tests here): copy the workflow into a
temporary directory and run Snakemake there, and read its job statistics."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "config" / "config.yaml"   # the base every CLI config starts from
BIN = Path(sys.executable).parent
WORKFLOW_FILES = ["Snakefile", "workflow", "config", "envs", "profiles", "slurm"]


def copy_workflow(dst: Path) -> Path:
    """Copy Snakefile, workflow/, config/, envs/, profiles/ and the `slurm` link into dst."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        src = REPO / name
        if src.is_symlink():
            os.symlink(os.readlink(src), dst / name)
        elif src.is_dir():
            shutil.copytree(src, dst / name, symlinks=True)
        else:
            shutil.copy2(src, dst / name)
    return dst


def snakemake(args: list[str], cwd: Path, env: dict | None = None, timeout: int = 1800,
              path_prefix: list[Path] = ()) -> subprocess.CompletedProcess:
    """Run `snakemake ARGS` in cwd with this virtualenv's bin/ on PATH."""
    full_env = dict(os.environ)
    full_env["PATH"] = os.pathsep.join([*map(str, path_prefix), str(BIN), full_env.get("PATH", "")])
    full_env.pop("AGREPA_SKIP_PATH_CHECK", None)
    full_env.update(env or {})
    return subprocess.run([str(BIN / "snakemake"), *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


def job_counts(output: str) -> dict[str, int]:
    """Rule -> job count from Snakemake's "Job stats" table (first one printed)."""
    lines = output.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Job stats:")
    except StopIteration:
        return {}
    counts = {}
    for line in lines[start + 3:]:
        m = re.match(r"^(\S+)\s+(\d+)$", line.strip())
        if not m or m.group(1) == "total":
            break
        counts[m.group(1)] = int(m.group(2))
    return counts


def mtimes(root: Path) -> dict[str, int]:
    """Relative path -> mtime_ns of every file under root (logs, benchmarks and hidden files excluded)."""
    out = {}
    for p in root.rglob("*"):
        rel = p.relative_to(root)
        top = rel.parts[0]
        if p.is_file() and not any(part.startswith(".") for part in rel.parts) and top not in ("logs", "benchmarks"):
            out[str(rel)] = p.stat().st_mtime_ns
    return out
