"""Benchmark: peak anonymous memory of a training job against the corpus size.

Writes two synthetic corpora (the stores `agrepa train` reads: manifest, mels, tokens,
semantic and acoustic embeddings; clips of `audio.max_seconds`, half speech, half audio, in
shards of 64 clips, as tests/test_dataset.py's make_corpus but at growing size), runs a short
warm-up (`agrepa train --phase warmup --steps N`, a small DiT) on each and samples the RssAnon
of the job's process tree (DataLoader workers included) from /proc every 20 ms. Prints both
peaks and the growth ratio: growth of peak memory / growth of the train split's fp32 mel
bytes (goal <= 0.10; the in-memory loader of issue 23 scored 2.5).

Synthetic stores rather than `agrepa fixtures paper --scale K`: the paper path's preprocessing
(mels, teachers, tokens) of the larger scale takes far longer than the job measured here on a
2-core machine. `--before REV` measures that revision's `src/` and `config/` as well (extracted
with `git archive`, run with the same interpreter), on the same corpora. Example::

    python benchmarks/bench_scale.py --clips 64 --scale 16 --before 7400d43

``--paper`` measures every job of the paper path instead (issue 23's first must-show): for each of
``--scales K1 K2``, in a fresh copy of the workflow (Snakefile, workflow/, config/, ... as
tests/test_rehearsal.py lays it out), `agrepa fixtures paper --config config/config.yaml --config
config/paper.yaml --out results/fixtures/paper --seed 0 --scale K`, then `snakemake
results/runs/A/seed0/warmup/final.pt --cores 2 --configfile config/paper.yaml config/rehearsal.yaml`
(config A's seed-0 warm-up and everything it needs: corpora, merge, mel parts and gather, teacher
embedding parts and gathers, token fits, encode part and gather), every job cold. A thread samples
/proc every 50 ms and adds up the RssAnon of each job's process tree: the job's shell, its `agrepa`
process and its DataLoader workers, found by their stdout (every rule's shell writes ``> {log}``, so
all of them have fd 1 on ``results/logs/<rule>/<wildcards>.log``; a forked DataLoader worker's
RssAnon includes the pages it still shares copy-on-write with the training process, so the sum
counts those once per worker: a constant offset, not a growth). RssAnon rather than the
``max_uss`` of the rules' Snakemake ``benchmark:`` files: USS also counts private file-backed pages
(written or copy-on-write mapped files), while memory that grows with the corpus is anonymous; and
Snakemake samples every 0.5 s for the first 15 s of a job and every 30 s after, which misses short
peaks of a long job. The benchmark files' ``max_uss`` is printed beside it as a cross-check. The
train split's fp32 mel bytes are frames x n_mels x 4 summed over the train clips of the mel store.
The rehearsal's ``train.warmup_epochs`` is a fraction of an epoch, so its warm-up steps grow with
the corpus (2 at scale 1, 16 at scale 8), and the training process's memory grows with its first
steps (scale 2, one process: 1075 / 1613 / 1748 MiB RssAnon after 1 / 2 / 4 steps): ``--fixed-steps
E`` overlays ``train.warmup_epochs: E / K`` at scale K, the same steps at both scales (E = 0.36: 8).
Jobs run with ``--config warm_start=False``: with the warm start (agrepa/warm.py) every job is forked
from one server, its RssAnon counts the server's ~440 MiB of imported modules, and the rules'
benchmark files measure only the thin `agrepa` client (max_rss 14 MiB for a 2-GiB training job).

Measured 2026-12-07, 2-core CPU (no GPU), `--paper --scales 1 8 --fixed-steps 0.36` (8 warm-up steps
at both scales; 41 -> 328 clips, 26 -> 206 train)::

    train split fp32 mel: scale 1 9.2 MiB, scale 8 73.5 MiB (growth 64.4 MiB)
    job                                             peak@1    peak@8   growth   / mel    uss@1    uss@8  (MiB)
    data_corpus/audioset                              54.9      57.9      3.1   0.048     51.2     55.5
    data_corpus/librispeech                           53.4      53.7      0.3   0.005     56.4     54.1
    data_mels/data_mels                              302.9     302.9      0.0   0.000    303.6    316.2
    data_mels_part/part-00000of00002                 345.9     453.3    107.4   1.669    363.9    453.7  OVER 0.10
    data_mels_part/part-00001of00002                 343.3     414.2     70.9   1.101    377.3    415.1  OVER 0.10
    data_merge/data_merge                             49.8      49.8      0.1   0.001     46.0     46.7
    teacher_embed/acoustic                           301.3     301.5      0.2   0.003    320.1    301.8
    teacher_embed/semantic                           301.2     301.5      0.2   0.004    353.1    301.9
    teacher_embed_part/acoustic_part-00000of00001     537.3     625.1     87.8   1.364    584.7    594.4  OVER 0.10
    teacher_embed_part/semantic_part-00000of00001     653.9     686.8     32.9   0.511    743.9    661.4  OVER 0.10
    tokens_encode/A                                  298.0     298.2      0.2   0.004    315.5    313.0
    tokens_encode_part/A_part-00000of00001           394.5     433.4     38.9   0.604    442.1    473.0  OVER 0.10
    tokens_fit/audio                                 369.0     369.0      0.1   0.001    446.7    384.6
    tokens_fit/speech                                390.3     428.1     37.8   0.587    434.4    439.9  OVER 0.10
    train_warmup/A_seed0                            3435.5    3530.7     95.2   1.480   1773.2   1750.5  OVER 0.10

At this size every part is within one store shard (``shard_size`` 512 mels, 256 embeddings, 1024
tokens; 164 clips per mel part, 328 per embed / encode part), and a StoreWriter holds a shard's
tensors until it is full (and `safetensors.save_file` serialises them into one more buffer at the
flush): those jobs should grow until a part passes its shard size and stay flat after (the
1-vs-64 run below shows two that do not).

The same, `--scales 1 32` (same day and machine; 41 -> 1312 clips, 26 -> 825 train; 656 clips per mel
part, 1312 per embed / encode part: every part past its first shard)::

    train split fp32 mel: scale 1 9.2 MiB, scale 32 295.1 MiB (growth 285.9 MiB)
    job                                             peak@1   peak@32   growth   / mel    uss@1   uss@32  (MiB)
    data_corpus/audioset                              57.1      58.0      0.9   0.003     51.9     58.4
    data_corpus/librispeech                           53.4      54.0      0.6   0.002     53.7     56.0
    data_mels/data_mels                              303.0     303.5      0.5   0.002    303.4    303.8
    data_mels_part/part-00000of00002                 341.3     668.6    327.2   1.145    468.6    586.9  OVER 0.10
    data_mels_part/part-00001of00002                 343.0     593.9    250.9   0.877    364.4    521.5  OVER 0.10
    data_merge/data_merge                             49.8      50.3      0.6   0.002     50.0     51.0
    teacher_embed/acoustic                           301.3     302.5      1.2   0.004    319.4    425.1
    teacher_embed/semantic                           301.2     302.5      1.3   0.004    315.6    302.7
    teacher_embed_part/acoustic_part-00000of00001     557.4     601.9     44.5   0.156    514.6    554.4  OVER 0.10
    teacher_embed_part/semantic_part-00000of00001     664.2     729.9     65.8   0.230    440.5    756.8  OVER 0.10
    tokens_encode/A                                  298.0     299.2      1.3   0.004    298.3    314.7
    tokens_encode_part/A_part-00000of00001           401.2     462.5     61.3   0.214    435.3    507.2  OVER 0.10
    tokens_fit/audio                                 369.0     369.6      0.6   0.002    391.7    389.8
    tokens_fit/speech                                390.3     454.0     63.7   0.223    424.4    481.0  OVER 0.10
    train_warmup/A_seed0                            3396.8    3294.3   -102.5  -0.359   1667.4   1572.5

Read across the two runs (their scale-1 peaks agree within 5 MiB), scale 8 -> 32 (mel +221.6 MiB):
teacher_embed_part/acoustic -23 MiB (<= 0; but +85 from 32 to 64), semantic +43 (0.19), tokens_encode_part +29 (0.13),
tokens_fit/speech +26 (0.12): the ratios fall with K, as a buffer bounded by the shard size (or by
`tokens.usage_max_clips`) would (1 vs 64 below: not all of them); data_mels_part +215 (0.97) is still its ramp (a part reaches 512
clips at K ~ 26), its bound is one shard of mels and its serialised copy. The training job is within
its own noise: the tree sum at the same scale varies by ~350 MiB between reruns (2914 / 3258 MiB at
scale 1), which is more than 0.10 x the mel growth at these sizes, and its growth to scale 32 is
negative. The training process's own peak (1784 / 1753 MiB at scale 1, 1920 / 1927 at scale 8 in two
reruns each) is not the index: `TrainingData` of the train split adds 1 MiB at both scales (299 MiB
after the imports either way); one step with ``train.num_workers: 0`` peaks at 1076 MiB at scale 1
and 1062 at scale 8 (with 4 workers: 956 and 1075), so it likely follows which clips the seeded
sampler draws (a batch's length sets the activation memory; not verified), not the corpus size.
The DataLoader workers hold 376 MiB each at both scales.

And `--scales 1 64` (the issue's ask; same day and machine; 41 -> 2624 clips, 1650 train; 1312 clips
per mel part; scale 64's snakemake run 334 s)::

    train split fp32 mel: scale 1 9.2 MiB, scale 64 589.1 MiB (growth 579.9 MiB)
    job                                             peak@1   peak@64   growth   / mel    uss@1   uss@64  (MiB)
    data_corpus/audioset                              55.2      58.4      3.2   0.006     51.8     58.0
    data_corpus/librispeech                           53.4      55.0      1.6   0.003     55.9     56.4
    data_mels/data_mels                              302.9     304.8      1.9   0.003    318.2    305.1
    data_mels_part/part-00000of00002                 341.7     710.6    368.8   0.636    362.7    709.3  OVER 0.10
    data_mels_part/part-00001of00002                 341.5     760.6    419.1   0.723    364.2    486.4  OVER 0.10
    data_merge/data_merge                             49.8      52.5      2.8   0.005     52.2     45.2
    teacher_embed/acoustic                           301.3     304.3      3.0   0.005    320.2    304.7
    teacher_embed/semantic                           301.2     304.2      3.0   0.005    305.8    318.1
    teacher_embed_part/acoustic_part-00000of00001     566.1     687.4    121.3   0.209    522.6    672.9  OVER 0.10
    teacher_embed_part/semantic_part-00000of00001     635.3     729.1     93.7   0.162    716.2    743.8  OVER 0.10
    tokens_encode/A                                  298.0     301.0      3.0   0.005    301.1    301.9
    tokens_encode_part/A_part-00000of00001           394.5     473.5     79.0   0.136    434.3    509.1  OVER 0.10
    tokens_fit/audio                                 369.0     370.3      1.3   0.002    440.9    386.9
    tokens_fit/speech                                389.5     468.1     78.6   0.136    426.4    501.8  OVER 0.10
    train_warmup/A_seed0                            3544.7    3204.7   -340.0  -0.586   2112.9   1660.1

The runs above predate four fixes (docs/architecture.md, "Memory of the per-clip stages"): the
streaming shard writer, row batches made one at a time, oneDNN off in the resampler, clips longest
first; and rehearsal.yaml's ``teachers.batch_size: 4``, so that both scales run full teacher batches.
After them, `--scales 1 64 --fixed-steps 0.36` (2026-12-07, same machine, nothing else running)::

    train split fp32 mel: scale 1 9.2 MiB, scale 64 589.1 MiB (growth 579.9 MiB); peak = max over 50-ms samples of the job's process-tree RssAnon
    job                                             peak@1   peak@64   growth   / mel    uss@1   uss@64  (MiB)
    data_corpus/audioset                              57.9      58.2      0.2   0.000     55.6     56.0
    data_corpus/librispeech                           53.4      54.9      1.5   0.003     52.7     57.3
    data_mels/data_mels                              302.9     304.7      1.8   0.003    305.6    371.1
    data_mels_part/part-00000of00002                 338.8     348.7      9.8   0.017    339.8    347.5
    data_mels_part/part-00001of00002                 349.0     370.1     21.1   0.036    363.9    360.9
    data_merge/data_merge                             49.8      52.4      2.7   0.005     52.3     52.9
    teacher_embed/acoustic                           301.3     302.9      1.6   0.003    306.9    317.3
    teacher_embed/semantic                           301.3     303.8      2.6   0.004    306.5    298.2
    teacher_embed_part/acoustic_part-00000of00001     379.0     365.2    -13.8  -0.024    387.9    374.1
    teacher_embed_part/semantic_part-00000of00001     488.9     501.3     12.4   0.021    596.5    592.0
    tokens_encode/A                                  298.0     301.0      3.0   0.005    303.7    304.7
    tokens_encode_part/A_part-00000of00001           397.2     441.1     44.0   0.076    454.8    493.6
    tokens_fit/audio                                 369.0     370.2      1.2   0.002    446.0    378.9
    tokens_fit/speech                                389.8     432.7     42.9   0.074    388.9    478.9
    train_warmup/A_seed0                            3168.0    2899.0   -269.0  -0.464   1804.1   1558.6

Every preprocessing job is within 0.10 (the largest: tokens_encode_part and tokens_fit/speech,
0.08, onnxruntime's CPU arena, sized by the longest clip and reused after); the training job's
growth is negative, within its rerun noise.

Example::

    python benchmarks/bench_scale.py --paper --scales 1 64 --fixed-steps 0.36
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
N_MELS, VOCAB, DIM_SEM, DIM_AC = 100, 64, 32, 32
FPS = 24000 / 256
TOKEN_RATE = FPS / 4


def write_corpus(root: Path, n: int, seconds: float) -> int:
    """``n`` clips of ``seconds``; returns the fp32 mel bytes of the train split."""
    from agrepa.store import StoreWriter

    g = torch.Generator().manual_seed(0)
    T = int(seconds * FPS)
    rows = []
    meta_tok = {"vocab_size": VOCAB, "offsets": {"speech": 1, "audio": 1 + (VOCAB - 1) // 2}, "paired": False,
                "position_rate": {"speech": TOKEN_RATE, "audio": TOKEN_RATE}, "granularity": {"speech": 1, "audio": 1}}
    writers = {"mels": StoreWriter(root / "mels", {"stats": {"mean": [-4.0] * N_MELS, "std": [2.0] * N_MELS}}, 64),
               "tokens": StoreWriter(root / "tokens", meta_tok, 64),
               "semantic": StoreWriter(root / "semantic", {"dim": DIM_SEM}, 64),
               "acoustic": StoreWriter(root / "acoustic", {"dim": DIM_AC}, 64)}
    for k in range(n):
        dom = "speech" if k % 2 == 0 else "audio"
        cid = f"{dom}_{k:06d}"
        writers["mels"].add(cid, {"mel": torch.randn(T, N_MELS, generator=g) * 2 - 4})
        lo, hi = (1, 1 + (VOCAB - 1) // 2) if dom == "speech" else (1 + (VOCAB - 1) // 2, VOCAB)
        writers["tokens"].add(cid, {"tokens": torch.randint(lo, hi, (-(-T // 4),), generator=g)})
        teacher, dim = ("semantic", DIM_SEM) if dom == "speech" else ("acoustic", DIM_AC)
        writers[teacher].add(cid, {"pooled": torch.randn(dim, generator=g)})
        rows.append({"id": cid, "path": f"audio/{cid}.wav", "duration": T / FPS, "sample_rate": 24000, "domain": dom,
                     "split": "train", "speaker": "s1" if dom == "speech" else "", "text": "a" if dom == "speech" else "",
                     "labels": "" if dom == "speech" else "x", "caption": ""})
    for w in writers.values():
        w.close()
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return n * T * N_MELS * 4


def tree_rss_anon(pid: int) -> int:
    """RssAnon (bytes) of ``pid`` and all its descendants."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    total += int(line.split()[1]) * 1024
            for t in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (t / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def run_job(src: Path, corpus: Path, out: Path, steps: int, workers: int | None, seconds: float) -> int:
    """Peak tree RssAnon of one `agrepa train --phase warmup` job (src's code and config)."""
    train = {"batch_size": 8, "crop_seconds": 1.5, "checkpoint_every": 1000, "log_every": 1000, "compile": False}
    if workers is not None:
        train["num_workers"] = workers
    over = {"device": "cpu", "audio": {"max_seconds": seconds},
            "model": {"dim": 64, "n_heads": 2, "ff_mult": 2, "token_dim": None}, "train": train}
    out.mkdir(parents=True, exist_ok=True)
    (out / "over.yaml").write_text(yaml.safe_dump(over))
    cmd = [sys.executable, "-m", "agrepa.cli", "train", "--config", str(src / "config" / "config.yaml"),
           "--config", str(out / "over.yaml"), "--phase", "warmup", "--seed", "0", "--steps", str(steps),
           "--manifest", str(corpus / "manifest.csv"), "--out", str(out / "run"),
           *[a for s in ("mels", "tokens", "semantic", "acoustic") for a in (f"--{s}", str(corpus / s))]]
    env = dict(os.environ, PYTHONPATH=str(src / "src"), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = [0]

    def sample():
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_rss_anon(proc.pid))
            time.sleep(0.02)

    t = threading.Thread(target=sample)
    t.start()
    err = proc.stderr.read().decode()
    proc.wait()
    t.join()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    return peak[0]


def measure(name: str, src: Path, corpora: dict, steps: int, workers: int | None, seconds: float, tmp: Path) -> None:
    peaks = {k: run_job(src, path, tmp / f"{name}-{k}", steps, workers, seconds) for k, (path, _) in corpora.items()}
    (k1, (_, m1)), (kk, (_, mk)) = corpora.items()
    ratio = (peaks[kk] - peaks[k1]) / (mk - m1)
    print(f"{name} ({src}): scale {k1}: mel {m1 / 2**20:.0f} MiB, peak RssAnon {peaks[k1] / 2**20:.0f} MiB; "
          f"scale {kk}: mel {mk / 2**20:.0f} MiB, peak RssAnon {peaks[kk] / 2**20:.0f} MiB; "
          f"growth ratio {ratio:.3f} (goal <= 0.10)", flush=True)


# --- --paper: every job of the paper path up to config A's seed-0 warm-up -------------------------
PAPER_RUN = ["--cores", "2", "--configfile", "config/paper.yaml", "config/rehearsal.yaml"]
COLD = ["--config", "warm_start=False"]   # every job its own process, as under SLURM (agrepa/warm.py)
PAPER_TARGET = "results/runs/A/seed0/warmup/final.pt"   # WARMUP of workflow/rules/common.smk, tc=A, seed=0
GOAL = 0.10


def job_of_log(path: str, logs: str) -> str | None:
    """``rule/wildcards`` of a job's log file ``LOGS/<rule>/<wildcards>.log`` (None if not under LOGS)."""
    logs = logs.rstrip("/") + "/"
    if not path.startswith(logs) or not path.endswith(".log"):
        return None
    return path[len(logs):-len(".log")]


def parse_benchmark(text: str) -> dict[str, float]:
    """A Snakemake ``benchmark:`` TSV (header row, one row per repeat) -> {column: float} of the
    last row; ``h:m:s`` is dropped and ``NA`` (a job shorter than the first sample) reads as NaN."""
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) < 2:
        raise ValueError("a benchmark file needs a header and a row")
    head, row = lines[0].split("\t"), lines[-1].split("\t")
    return {k: (float("nan") if v == "NA" else float(v)) for k, v in zip(head, row) if k != "h:m:s"}


def read_benchmarks(bench_dir: Path) -> dict[str, dict[str, float]]:
    """``{rule/wildcards: parse_benchmark(file)}`` for every ``BENCH/<rule>/<wildcards>.tsv``."""
    return {str(p.relative_to(bench_dir).with_suffix("")): parse_benchmark(p.read_text())
            for p in sorted(bench_dir.glob("*/*.tsv"))}


def growth_rows(peak1: dict[str, int], peakk: dict[str, int], mel1: int, melk: int,
                goal: float = GOAL) -> list[dict]:
    """One row per job measured at both scales: its peaks, growth, growth / mel growth, over the goal."""
    if melk <= mel1:
        raise ValueError(f"the train split's mel bytes must grow ({mel1} -> {melk})")
    rows = []
    for job in sorted(set(peak1) & set(peakk)):
        growth = peakk[job] - peak1[job]
        ratio = growth / (melk - mel1)
        rows.append({"job": job, "peak1": peak1[job], "peakk": peakk[job], "growth": growth, "ratio": ratio,
                     "over": ratio > goal})
    return rows


def format_table(rows: list[dict], k1: int, kk: int, mel1: int, melk: int, other: dict | None = None) -> str:
    """The printed table (MiB); ``other`` = {job: (a, b)} adds a column pair (Snakemake's max_uss)."""
    mib = 2 ** 20
    out = [f"train split fp32 mel: scale {k1} {mel1 / mib:.1f} MiB, scale {kk} {melk / mib:.1f} MiB "
           f"(growth {(melk - mel1) / mib:.1f} MiB); peak = max over 50-ms samples of the job's process-tree RssAnon"]
    head = f"{'job':44s} {'peak@' + str(k1):>9s} {'peak@' + str(kk):>9s} {'growth':>8s} {'/ mel':>7s}"
    if other is not None:
        head += f" {'uss@' + str(k1):>8s} {'uss@' + str(kk):>8s}"
    out.append(head + "  (MiB)")
    for r in rows:
        line = (f"{r['job']:44s} {r['peak1'] / mib:9.1f} {r['peakk'] / mib:9.1f} {r['growth'] / mib:8.1f} "
                f"{r['ratio']:7.3f}")
        if other is not None:
            a, b = other.get(r["job"], (float("nan"), float("nan")))
            line += f" {a:8.1f} {b:8.1f}"
        out.append(line + ("  OVER 0.10" if r["over"] else ""))
    return "\n".join(out)


def train_mel_bytes(results: Path) -> int:
    """fp32 bytes of the train split's mels, frames x n_mels x 4 from the mel store's headers."""
    from agrepa.store import Store

    manifest = pd.read_csv(results / "data" / "manifest.csv")
    train = manifest.loc[manifest["split"] == "train", "id"].astype(str).tolist()
    shapes = Store(results / "data" / "mels").shapes("mel", train)
    if len(shapes) != len(train):
        raise RuntimeError(f"{len(train) - len(shapes)} train clips missing from the mel store")
    return sum(int(t) * int(m) * 4 for t, m in shapes.values())


class JobSampler(threading.Thread):
    """Every ``interval`` s, the RssAnon of each Snakemake job's process tree; peak per job.

    A job is identified by its stdout: every rule's shell ends ``> {log} 2>&1``, so the job's shell,
    the `agrepa` process and its DataLoader workers all have fd 1 on ``LOGS/<rule>/<wildcards>.log``
    (and a child with another stdout keeps its nearest ancestor's job). Snakemake itself is no job."""

    def __init__(self, root_pid: int, logs: Path, interval: float = 0.05):
        super().__init__(daemon=True)
        self.root_pid, self.logs, self.interval = root_pid, str(logs), interval
        self.peaks: dict[str, int] = {}
        self.stop = threading.Event()

    def sample(self) -> dict[str, int]:
        per_job: dict[str, int] = {}
        todo = [(self.root_pid, None)]
        while todo:
            pid, job = todo.pop()
            try:
                own = job_of_log(os.readlink(f"/proc/{pid}/fd/1"), self.logs)
                job = own or job
                if job is not None:
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                        if line.startswith("RssAnon:"):
                            per_job[job] = per_job.get(job, 0) + int(line.split()[1]) * 1024
                for t in Path(f"/proc/{pid}/task").iterdir():
                    todo += [(int(c), job) for c in (t / "children").read_text().split()]
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                continue
        return per_job

    def run(self):
        while not self.stop.is_set():
            for job, rss in self.sample().items():
                self.peaks[job] = max(self.peaks.get(job, 0), rss)
            time.sleep(self.interval)


def paper_run(root: Path, scale: int, target: str, interval: float,
              warmup_epochs: float | None = None) -> tuple[dict[str, int], dict, int, float]:
    """Fixtures at ``scale``, then Snakemake to ``target`` in a fresh workflow copy (every job cold).
    ``warmup_epochs`` (the value at scale 1) overlays ``train.warmup_epochs: warmup_epochs / scale``:
    the same number of warm-up steps at every scale. Returns (peak RssAnon per job, Snakemake
    benchmark rows per job, train mel bytes, wall s)."""
    sys.path.insert(0, str(REPO / "tests"))
    from test_workflow_support import copy_workflow   # the workflow copy the rehearsal test runs in

    copy_workflow(root)
    over = []
    if warmup_epochs is not None:
        (root / "bench_steps.yaml").write_text(yaml.safe_dump({"train": {"warmup_epochs": warmup_epochs / scale}}))
        over = ["bench_steps.yaml"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
               PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    env.pop("AGREPA_SKIP_PATH_CHECK", None)
    subprocess.run([sys.executable, "-m", "agrepa.cli", "fixtures", "paper", "--config", "config/config.yaml",
                    "--config", "config/paper.yaml", "--out", "results/fixtures/paper", "--seed", "0",
                    "--scale", str(scale)], cwd=root, env=env, check=True, stdout=subprocess.DEVNULL)
    t0 = time.time()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "snakemake"), target, *PAPER_RUN, *over, *COLD],
                            cwd=root,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = JobSampler(proc.pid, root / "results" / "logs", interval)
    sampler.start()
    out = proc.communicate()[0]
    sampler.stop.set()
    sampler.join()
    wall = time.time() - t0
    if proc.returncode:
        raise RuntimeError(f"snakemake at scale {scale} failed in {root}:\n{out[-4000:]}")
    return sampler.peaks, read_benchmarks(root / "results" / "benchmarks"), train_mel_bytes(root / "results"), wall


def paper_main(args) -> None:
    k1, kk = args.scales
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_scale_paper-"))
    runs = {}
    for k in (k1, kk):
        root = work / f"scale{k}"
        if root.exists():
            shutil.rmtree(root)   # every job cold: a fresh copy, fresh fixtures, no results
        runs[k] = paper_run(root, k, args.target, args.interval, args.fixed_steps)
        peaks, _, mel, wall = runs[k]
        print(f"scale {k}: {len(peaks)} jobs in {wall:.0f} s, train mel {mel / 2**20:.1f} MiB ({root})", flush=True)
    (p1, b1, m1, _), (pk, bk, mk, _) = runs[k1], runs[kk]
    rows = growth_rows(p1, pk, m1, mk)
    uss = {j: (b1.get(j, {}).get("max_uss", float("nan")), bk.get(j, {}).get("max_uss", float("nan"))) for j in p1}
    print(format_table(rows, k1, kk, m1, mk, other=uss))
    missing = sorted(set(p1) ^ set(pk))
    if missing:
        print(f"jobs measured at one scale only: {', '.join(missing)}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=64, help="train clips at scale 1")
    ap.add_argument("--scale", type=int, default=16, help="the larger corpus has this many times the clips")
    ap.add_argument("--seconds", type=float, default=8.0, help="length of every clip (audio.max_seconds)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2, help="train.num_workers of this checkout's run")
    ap.add_argument("--before", help="also measure this git revision (its src/ and config/)")
    ap.add_argument("--paper", action="store_true", help="the paper path, every job, at --scales (see above)")
    ap.add_argument("--scales", type=int, nargs=2, default=[1, 4], metavar=("K1", "K2"),
                    help="--paper: the two `agrepa fixtures paper --scale` values")
    ap.add_argument("--target", default=PAPER_TARGET, help="--paper: the Snakemake target")
    ap.add_argument("--interval", type=float, default=0.05, help="--paper: seconds between /proc samples")
    ap.add_argument("--fixed-steps", type=float, metavar="EPOCHS",
                    help="--paper: train.warmup_epochs EPOCHS / K at scale K (the same warm-up steps at both)")
    ap.add_argument("--keep", help="--paper: run in this directory (scale<K>/ each) and keep it")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    if args.paper:
        return paper_main(args)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpora = {k: (tmp / f"corpus-{k}", write_corpus(tmp / f"corpus-{k}", args.clips * k, args.seconds))
                   for k in (1, args.scale)}
        measure("after", REPO, corpora, args.steps, args.workers, args.seconds, tmp)
        if args.before:
            old = tmp / "before"
            old.mkdir()
            archive = subprocess.run(["git", "-C", str(REPO), "archive", args.before, "src", "config"],
                                     check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
            measure("before", old, corpora, args.steps, None, args.seconds, tmp)


if __name__ == "__main__":
    main()
