"""`agrepa plan` (issue 24, item 6): the analytic FLOPs of a training step equal torch's FLOP counter on
the DiT (forward + backward, a small width on the CPU and the paper size on the meta device), the
plan's job counts are Snakemake's dry run's at paper.yaml with nothing on disk, in under 10 s, and
--json's total is the sum of its stages."""
import json
import os
import subprocess
import sys

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from agrepa import cli
from agrepa import config as config_mod
from agrepa.caching.flops import Dims, forward_flops
from agrepa.model.dit import DiT
from agrepa.planning import estimate
from test_workflow_support import REPO, copy_workflow, job_counts, snakemake

CONFIGS = [str(REPO / "config" / "config.yaml"), str(REPO / "config" / "paper.yaml")]


def step_flops_counted(m: DiT, B: int, T: int, N: int, device: str) -> int:
    """FLOPs torch counts for one training step of the model: forward and backward of a loss."""
    x = torch.randn(B, T, m.n_mels, device=device)
    t = torch.rand(B, device=device)
    tokens = torch.randint(1, m.vocab_size, (B, N), device=device)
    prompt = torch.randn(B, T, m.n_mels, device=device)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        m(x, t, tokens, prompt).square().mean().backward()
    return fc.get_total_flops()


def test_train_step_flops_agree_with_the_flop_counter_at_a_small_width():
    torch.manual_seed(0)
    m = DiT(n_layers=4, dim=64, n_heads=4, n_mels=16, vocab_size=50, ff_mult=4).train()
    B, T = 4, 48
    counted = step_flops_counted(m, B, T, N=12, device="cpu")
    analytic = 3 * forward_flops(Dims.of(m), B, T)["total"]
    assert abs(analytic - counted) / counted < 0.05, (analytic, counted)


def test_train_step_flops_agree_with_the_flop_counter_at_paper_size_on_meta():
    cfg = config_mod.load(CONFIGS)
    with torch.device("meta"):
        m = DiT(n_layers=cfg["model"]["n_layers"], dim=cfg["model"]["dim"], n_heads=cfg["model"]["n_heads"],
                n_mels=cfg["audio"]["n_mels"], vocab_size=4096, ff_mult=cfg["model"]["ff_mult"]).train()
    T, B = estimate.crop_frames(cfg), 2           # FLOPs are linear in the rows: 2 of the 32
    counted = step_flops_counted(m, B, T, N=500, device="meta")
    per_step = estimate.train_step_flops(cfg)
    assert T == 938 and int(cfg["train"]["batch_size"]) == 32
    assert abs(per_step * B / 32 - counted) / counted < 0.05, (per_step, counted)
    assert 60e12 < per_step < 66e12               # the issue's "about 63 TFLOP per step at batch 32"


def plan_rows(text: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split() for line in text.splitlines()[2:]}


def test_plan_counts_the_dry_runs_jobs_at_paper_scale_with_nothing_on_disk(tmp_path, monkeypatch):
    work = copy_workflow(tmp_path / "wf")
    assert not (work / "results").exists()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-m", "agrepa.cli", "plan", "--config", CONFIGS[0], "--config", CONFIGS[1],
                          "results/table2.csv"], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = plan_rows(run.stdout)
    assert run.stdout.startswith("estimate (MFU 0.4")
    assert not (work / "results").exists() and not (work / ".snakemake").exists()   # it wrote nothing
    dry = snakemake(["results/table2.csv", "-n", "--configfile", *CONFIGS], cwd=work,
                    env={"AGREPA_SKIP_PATH_CHECK": "1"}, timeout=120)
    want = job_counts(dry.stdout + dry.stderr)
    assert want["train_warmup"] == 6 and want["train_branch"] == 48
    assert {rule: int(r[1]) for rule, r in rows.items() if rule != "total"} == want
    assert int(rows["total"][1]) == sum(want.values()) == 265
    # its time (~6 s idle, issue 24's "under 10 s") is measured, not asserted: CI never gates on a wall time


def test_plan_json_total_is_the_sum_of_its_stages(tmp_path, monkeypatch, capsys):
    work = copy_workflow(tmp_path / "wf")
    monkeypatch.chdir(work)
    assert cli.main(["plan", "--config", CONFIGS[0], "--config", CONFIGS[1], "results/table2.csv", "--json"]) == 0
    p = json.loads(capsys.readouterr().out)
    stages = p["stages"]
    assert p["total"]["gpu_hours"] == pytest.approx(sum(s["gpu_hours"] for s in stages.values()))
    assert p["total"]["jobs"] == sum(s["jobs"] for s in stages.values()) == 265
    assert p["total"]["wall_hours"] == pytest.approx(sum(s["wall_hours_per_job"] for s in stages.values()))
    # a warm-up is one epoch: 2 x AudioSet's clips / batch 32 steps (epoch_size balanced)
    assert stages["train_warmup"]["steps_per_job"] == -(-2 * 2041789 // 32)
    assert stages["train_branch"]["steps_per_job"] == -(-4 * 2041789 // 32)
    cfg = config_mod.load(CONFIGS)
    one = stages["train_branch"]["steps_per_job"] * estimate.train_step_flops(cfg) / (0.4 * 989e12) / 3600
    assert stages["train_branch"]["gpu_hours"] == pytest.approx(48 * one)
    assert stages["data_mels"]["gpu_hours"] == 0 and stages["teacher_embed_part"]["gpu_hours_per_job"] == 0.75
    assert p["total"]["disk_gb"] == pytest.approx(sum(s["disk_gb"] for s in stages.values() if s["disk_gb"] is not None))
    assert p["total"]["peak_mem_gb_requested"] == max(s["mem_gb_requested"] for s in stages.values())
    assert stages["data_mels_part"]["mem_gb_requested"] == 32.0               # resources.data of paper.yaml


def test_teacher_store_bytes_follow_what_is_read_at_paper_scale():
    """paper.yaml: no semantic frames (S3 tokens read audio); BEATs frames of the audio clips only, float16;
    each teacher embeds the clips of its own domain only (the only ``pooled`` read: ``pooled_read``)."""
    cfg = config_mod.load(CONFIGS)
    t, w = cfg["plan"]["teachers"], {d: estimate.window_seconds(cfg, d) for d in ("speech", "audio")}
    sem, aco = int(t["semantic"]["dim"]), int(t["acoustic"]["dim"])
    assert estimate.teacher_store_bytes_per_clip(cfg, "semantic", "speech") == sem * 4
    assert estimate.teacher_store_bytes_per_clip(cfg, "semantic", "audio") == 0         # not embedded
    assert estimate.teacher_store_bytes_per_clip(cfg, "acoustic", "speech") == 0        # not embedded
    assert estimate.teacher_store_bytes_per_clip(cfg, "acoustic", "audio") == pytest.approx(
        aco * 4 + float(t["acoustic"]["frame_rate"]) * w["audio"] * aco * 2)


def test_disk_and_memory_per_job_match_a_hand_computation_at_the_embedded_default():
    from agrepa.model.dit import build_model
    from agrepa.model.layers import n_params

    cfg = config_mod.load(CONFIGS[:1])
    counts = {"data_mels_part": 1, "teacher_embed_part": 2, "train_warmup": 1, "train_branch": 2, "sample": 3, "select": 1}
    p = estimate.plan(cfg, counts)
    st, GB = p["stages"], 1e9
    mel_s = 100 * 24000 / 256 * 4                                   # 100 bins x 93.75 fps x 4 B = 37.5 kB per second
    assert st["data_mels_part"]["disk_gb_per_job"] == pytest.approx((240 * 3.75 + 240 * 2.5) * mel_s / GB)
    # teacher stores: pooled [D] fp32 + frames [rate x seconds, D] (fp32 at the embedded default) where read,
    # of the 240 clips of each domain a role is read for: semantic the speech clips only (pooled and the
    # k-means speech tokens' frames), acoustic both (RepCodec on audio clips, Config B's k-means stand-in on
    # every clip's frames)
    sem = 240 * (384 * 4 + 50 * 3.75 * 384 * 4)
    aco = 240 * ((128 * 4 + 23.4375 * 3.75 * 128 * 4) + (128 * 4 + 23.4375 * 2.5 * 128 * 4))
    assert sem == 69_488_640 and aco == 18_245_760
    assert st["teacher_embed_part"]["disk_gb_per_job"] == pytest.approx((sem + aco) / 2 / GB)
    assert st["teacher_embed_part"]["disk_gb"] == pytest.approx((sem + aco) / GB)
    # checkpoints: last.pt and final.pt = 4 fp32 copies (weights, EMA, Adam m, v); a snapshot = the EMA
    P = n_params(build_model(cfg, 1 + 64 + 64))                      # built for real on the CPU
    assert estimate.dit_params(cfg) == P
    assert st["train_warmup"]["disk_gb_per_job"] == pytest.approx(2 * 16 * P / GB)
    assert st["train_branch"]["disk_gb_per_job"] == pytest.approx((2 * 16 * P + 4 * 4 * P) / GB)   # 4 snapshot fractions
    assert st["train_branch"]["disk_gb"] == pytest.approx(2 * st["train_branch"]["disk_gb_per_job"])
    # samples: 8 + 8 clips of PCM_16 at 24 kHz + their fp32 mels
    assert st["sample"]["disk_gb_per_job"] == pytest.approx((8 * 3.75 + 8 * 2.5) * (24000 * 2 + mel_s) / GB)
    assert st["select"]["disk_gb_per_job"] is None and st["select"]["disk_basis"] == "not estimated"
    # memory: the request (resources.<group>.mem_mb) and, for training, 5 fp32 copies + activations
    assert st["data_mels_part"]["mem_gb_requested"] == cfg["resources"]["data"]["mem_mb"] / 1000
    assert st["select"]["mem_gb_requested"] == cfg["resources"]["default"]["mem_mb"] / 1000
    mc, B = cfg["model"], cfg["train"]["batch_size"]
    acts = mc["n_layers"] * B * estimate.crop_frames(cfg) * mc["dim"] * 34
    assert st["train_branch"]["gpu_mem_gb_est"] == pytest.approx((5 * 4 * P + acts) / GB)
    assert st["sample"]["gpu_mem_gb_est"] is None
    t = p["total"]
    assert t["disk_gb"] == pytest.approx(sum(s["disk_gb"] for s in st.values() if s["disk_gb"] is not None))
    assert t["peak_mem_gb_requested"] == max(s["mem_gb_requested"] for s in st.values())
    assert t["peak_gpu_mem_gb_est"] == st["train_branch"]["gpu_mem_gb_est"]
    text = estimate.table(p)
    assert "disk-GB/job" in text and "GPU-mem-GB" in text and plan_rows(text)["select"][8] == "-"


def test_paper_training_memory_and_checkpoints_are_of_the_issues_size():
    cfg = config_mod.load(CONFIGS)
    P = estimate.dit_params(cfg)
    assert 460e6 < P < 480e6                                        # the issue's 466.5 M (+ the token table)
    ck = estimate.checkpoint_bytes(P)
    assert ck["full"] == 16 * P and ck["snapshot"] == 4 * P         # ~7.5 GB and ~1.9 GB
    assert 20e9 < estimate.train_gpu_memory_bytes(cfg, 1, P) < 78e9    # fits one H100 at batch 32 (estimate)
    assert estimate.train_gpu_memory_bytes(cfg, 8, P) < estimate.train_gpu_memory_bytes(cfg, 1, P)


def test_table4_backbone_flops_on_meta_equal_the_count_of_a_real_step_at_the_embedded_default():
    """backbone_step counts on the meta device what torch's FLOP counter counts for a real forward and
    backward of the same backbone on the CPU (the embedded default's small sizes), for every backbone."""
    from agrepa.model import build_model
    from agrepa.model.layers import n_params

    cfg = config_mod.load(CONFIGS[:1])
    T, N, rows = estimate.crop_frames(cfg), int(1.5 * 50), 2
    vocab = 1 + int(cfg["tokens"]["speech"]["k"]) + int(cfg["tokens"]["audio"]["k"])
    backbones = estimate.table4_backbones(cfg)
    assert sorted(backbones) == ["cosyvoice", "f5", "voicebox"]          # report.table4.architectures but model.arch
    for arch, b in backbones.items():
        c = {**cfg, "model": {**cfg["model"], "arch": arch}}
        torch.manual_seed(0)
        m = build_model(c, vocab).train()
        x, t = torch.randn(rows, T, m.n_mels), torch.rand(rows)
        tokens, prompt = torch.randint(1, vocab, (rows, N)), torch.randn(rows, T, m.n_mels)
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
            m(x, t, tokens, prompt).square().mean().backward()
        assert b["step_flops"] == fc.get_total_flops() * cfg["train"]["batch_size"] / rows, arch
        assert b["params"] == n_params(m), arch


def test_table4_rules_take_their_backbones_flops_and_their_parent_rules_resources():
    cfg = config_mod.load(CONFIGS[:1])
    backbones = {"voicebox": {"step_flops": 3e12, "params": 100}, "f5": {"step_flops": 1e12, "params": 300}}
    counts = {"train_branch": 2, "train_branch_arch": 4, "probe_arch": 2, "sample": 1, "sample_arch": 2,
              "tokens_encode_part": 2, "select_arch": 2}
    st = estimate.plan(cfg, counts, backbones)["stages"]
    rate = float(cfg["plan"]["mfu"]) * float(cfg["plan"]["peak_tflops"]) * 1e12
    steps = st["train_branch"]["steps_per_job"]
    assert st["train_branch_arch"]["steps_per_job"] == steps
    assert st["train_branch_arch"]["gpu_hours_per_job"] == pytest.approx(steps * 2e12 / rate / 3600)   # mean step
    snaps = st["train_branch"]["disk_basis"].split(", ")[1].split()[0]
    assert st["train_branch_arch"]["disk_gb_per_job"] == pytest.approx((2 * 16 * 200 + int(snaps) * 4 * 200) / 1e9)
    assert "voicebox 3.0, f5 1.0 TFLOP" in st["train_branch_arch"]["basis"]
    for rule in ("probe_arch", "sample_arch"):      # the parent's resources group and plan.job_gpu_hours
        parent = rule.removesuffix("_arch")
        group = estimate.RULE_GROUPS[parent]
        assert st[rule]["group"] == group and st[rule]["gpus_per_job"] == int(cfg["resources"][group]["gpu"])
        assert st[rule]["runtime_min"] == int(cfg["resources"][group]["runtime"])
        assert st[rule]["gpu_hours_per_job"] == float(cfg["plan"]["job_gpu_hours"][parent])
    assert st["sample_arch"]["disk_gb_per_job"] == st["sample"]["disk_gb_per_job"]
    assert st["select_arch"]["basis"] == "CPU" and st["select_arch"]["disk_gb"] is None
    # token stores: int64 ids, one column per stream (B: 2), at the stream's rate (speech: k-means on
    # Whisper frames, 50 /s; audio: RepCodec on the event encoder's 23.4375 /s; B's positions: the faster
    # of the domain's stream and BEATs'), 240 + 240 clips of 3.75 s and 2.5 s, the mean of A and B
    A = 240 * 50 * 3.75 * 8 + 240 * 23.4375 * 2.5 * 8
    B = 240 * 50 * 3.75 * 2 * 8 + 240 * 23.4375 * 2.5 * 2 * 8
    assert (A, B) == (472_500, 945_000)
    assert st["tokens_encode_part"]["disk_gb_per_job"] == pytest.approx((A + B) / 2 / 1e9)
    assert st["tokens_encode_part"]["disk_gb"] == pytest.approx((A + B) / 1e9)


def test_paper_table4_backbones_are_of_their_papers_size():
    cfg = config_mod.load(CONFIGS)
    b = estimate.table4_backbones(cfg)
    assert 300e6 < b["voicebox"]["params"] < 360e6 and 300e6 < b["f5"]["params"] < 360e6      # ~330 M, F5 Base ~336 M
    assert 80e6 < b["cosyvoice"]["params"] < 130e6                                            # CosyVoice-300M's flow
    for arch in b:                       # each below the 24 x 1024 DiT's step but within a factor of 10
        assert 0.1 * estimate.train_step_flops(cfg) < b[arch]["step_flops"] < 1.2 * estimate.train_step_flops(cfg), arch
