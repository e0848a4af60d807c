"""Scatter / gather of the per-clip stages (shards.<stage>, agrepa/parts.py, agrepa.store.gather):
the workflow plans K part jobs and one gather per stage; a killed part job is the only one redone;
a gathered store equals the K = 1 store (mels and tokens bitwise, teacher embeddings within the
batched-inference tolerance); every reader reads a gathered store."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import yaml

from agrepa import cli, config
from agrepa.corpora.manifest import read_manifest, write_manifest
from agrepa.parts import part_name, part_range
from agrepa.store import Store, StoreWriter, gather, part_dir
from test_mels import _corpus as mel_corpus
from test_workflow_support import DEFAULT_CONFIG, REPO, copy_workflow, job_counts, snakemake

SKIP = {"AGREPA_SKIP_PATH_CHECK": "1"}
EMBED_TOL = 1e-4     # teacher embeddings, K parts vs 1: batch boundaries move (the project's batched vs batch-1 bound)


@pytest.fixture(scope="module")
def wf(tmp_path_factory):
    return copy_workflow(tmp_path_factory.mktemp("wf"))


def assert_same_tensors(a: Store, b: Store, atol: float = 0.0) -> float:
    """Every clip's every tensor equal (bitwise when atol == 0); returns the largest |difference|."""
    assert sorted(a.keys()) == sorted(b.keys())
    worst = 0.0
    for cid in a.keys():
        x, y = a.get(cid), b.get(cid)
        assert sorted(x) == sorted(y), cid
        for name in x:
            assert x[name].dtype == y[name].dtype and x[name].shape == y[name].shape, (cid, name)
            if atol == 0.0:
                assert torch.equal(x[name], y[name]), (cid, name)
            else:
                d = float((x[name].double() - y[name].double()).abs().max()) if x[name].numel() else 0.0
                assert d <= atol, (cid, name, d)
                worst = max(worst, d)
    return worst


def test_part_slices_cover_the_manifest_once():
    for n in (0, 1, 7, 100):
        for parts in (1, 2, 3, 8):
            spans = [part_range(n, k, parts) for k in range(parts)]
            assert spans[0][0] == 0 and spans[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
            assert max(b - a for a, b in spans) - min(b - a for a, b in spans) <= 1
    assert part_name(3, 8) == "part-00003of00008"
    with pytest.raises(ValueError, match="--part 8 --parts 8"):
        part_name(8, 8)


# ----------------------------------------------------------------------------- 1. dry runs
def test_dry_run_plans_k_part_jobs_and_one_gather_per_stage(wf):
    paper = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())["shards"]
    default = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["shards"]
    assert paper["mels"] > 1 and paper["embed"] > 1 and paper["encode"] > 1
    stores = ["results/data/mels/index.json", "results/tokens/A/index.json", "results/tokens/B/index.json"]
    for base, k in ((["--configfile", "config/paper.yaml"], paper), ([], default)):
        r = snakemake([*stores, "-n", "-p", "--cores", "1", *base], wf, env=SKIP)
        assert r.returncode == 0, r.stdout + r.stderr
        c = job_counts(r.stdout)
        assert c["data_mels_part"] == k["mels"] and c["data_mels"] == 1
        assert c["teacher_embed_part"] == 2 * k["embed"] and c["teacher_embed"] == 2        # semantic, acoustic
        assert c["tokens_encode_part"] == 2 * k["encode"] and c["tokens_encode"] == 2       # configs A, B
        last = {"mels": k["mels"] - 1, "embed": k["embed"] - 1, "encode": k["encode"] - 1}
        assert f"--part {last['mels']} --parts {k['mels']} --out results/data/mels" in r.stdout
        assert f"--gather --parts {k['mels']} --out results/data/mels" in r.stdout
        assert f"--part {last['embed']} --parts {k['embed']} --out results/embeddings/acoustic" in r.stdout
        assert f"--gather --parts {k['encode']} --out results/tokens/B" in r.stdout
        # Config B's parts read A's tokens as their primary column (speech and audio encoded once)
        b_parts = [line for line in r.stdout.splitlines() if "agrepa tokens encode" in line and "--part " in line]
        assert len(b_parts) == 2 * k["encode"]
        assert all(("--primary results/tokens/A " in line) == ("--token-config B" in line) for line in b_parts)


# ----------------------------------------------------------------------------- 2. a killed part
def test_a_killed_part_job_is_the_only_one_redone(wf, tmp_path):
    data = wf / "results" / "data"
    data.mkdir(parents=True, exist_ok=True)
    mel_corpus(data)                                   # results/data/manifest.csv + its clips (no synthesis)
    (data / "rejects.csv").write_text("path,reason\n")
    overlay = tmp_path / "three.yaml"
    overlay.write_text("shards: {mels: 3}\nwarm_start: false\n")
    args = ["results/data/mels/index.json", "--cores", "1", "--configfile", "config/test.yaml", str(overlay)]
    r = snakemake(args, wf)
    assert r.returncode == 0, r.stdout + r.stderr
    mels = data / "mels"
    parts = [mels / part_name(k, 3) for k in range(3)]
    before = {p.name: {f.name: f.stat().st_mtime_ns for f in p.iterdir()} for p in parts}
    first = Store(mels)
    assert sorted(first.shard_names()) == [f"{p.name}/shard-00000.safetensors" for p in parts]
    want = {cid: first.get(cid)["mel"].clone() for cid in first.keys()}
    # part 1's job rerun (e.g. its manifest slice retried) and killed midway: at its start it removed
    # its own and the gathered index.json (agrepa.store.start_part); it left a partial shard, no index
    (parts[1] / "index.json").unlink()
    (mels / "index.json").unlink()
    shard = parts[1] / "shard-00000.safetensors"
    shard.write_bytes(shard.read_bytes()[:100])
    dry = snakemake(["-n", "-p", *args], wf)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert job_counts(dry.stdout) == {"data_mels_part": 1, "data_mels": 1}
    assert "--part 1 --parts 3" in dry.stdout
    assert "--part 0 --parts 3" not in dry.stdout and "--part 2 --parts 3" not in dry.stdout
    r = snakemake(args, wf)
    assert r.returncode == 0, r.stdout + r.stderr
    after = {p.name: {f.name: f.stat().st_mtime_ns for f in p.iterdir()} for p in parts}
    assert after[parts[0].name] == before[parts[0].name] and after[parts[2].name] == before[parts[2].name]
    assert after[parts[1].name]["index.json"] > before[parts[1].name]["index.json"]
    again = Store(mels)
    for cid, mel in want.items():
        assert torch.equal(again.get(cid)["mel"], mel)
    assert job_counts(snakemake(["-n", *args], wf).stdout) == {}          # nothing left to do


# ----------------------------------------------------------------------------- 3. gathered == K = 1
@pytest.mark.parametrize("K", [3, 8])             # 8: more parts than the 6 clips, some of them empty
def test_gathered_mel_store_equals_the_one_part_store(tmp_path, K):
    man = mel_corpus(tmp_path)
    base = ["--config", str(DEFAULT_CONFIG), "--manifest", str(man)]
    assert cli.main(["data", "mels", *base, "--out", str(tmp_path / "one")]) == 0
    for k in range(K):
        assert cli.main(["data", "mels", *base, "--part", str(k), "--parts", str(K), "--out", str(tmp_path / "three")]) == 0
    assert not (tmp_path / "three" / "index.json").exists()          # parts only: no gathered index yet
    assert cli.main(["data", "mels", *base, "--gather", "--parts", str(K), "--out", str(tmp_path / "three")]) == 0
    one, three = Store(tmp_path / "one"), Store(tmp_path / "three")
    assert assert_same_tensors(one, three) == 0.0                     # bitwise
    s1, s3 = one.meta["stats"], three.meta["stats"]
    assert s1["n_frames"] == s3["n_frames"] and s1["n_clips"] == s3["n_clips"] == 3
    # the same float64 per-frame terms, summed part by part: equal to float64 rounding
    np.testing.assert_allclose(s3["mean"], s1["mean"], rtol=1e-12, atol=0)
    np.testing.assert_allclose(s3["std"], s1["std"], rtol=1e-12, atol=0)
    assert three.meta["parts"] == K and one.meta["parts"] == 1
    assert {k: v for k, v in one.meta.items() if k not in ("stats", "parts")} == \
        {k: v for k, v in three.meta.items() if k not in ("stats", "parts")}
    # the gather refuses a missing part and parts of another manifest
    (part_dir(tmp_path / "three", 2, K) / "index.json").unlink()
    assert cli.main(["data", "mels", *base, "--gather", "--parts", str(K), "--out", str(tmp_path / "three")]) == 2
    assert not (tmp_path / "three" / "index.json").exists()


def small_cfg() -> dict:
    """The embedded default on the CPU with small tokenizers (the teacher_tokens corpus's)."""
    cfg = config.load(DEFAULT_CONFIG)
    cfg["device"] = "cpu"
    cfg["teachers"]["batch_size"] = 4                # K = 1: batches of 4 + 3; K = 3 (2, 2, 3 clips): other batches
    cfg["tokens"]["speech"].update(k=16)
    cfg["tokens"]["audio"].update(kind="kmeans", k=8, iters=20, max_frames=100000)
    cfg["tokens"]["beats"].update(k=8)
    return cfg


@pytest.fixture(scope="module")
def teacher_tokens(tmp_path_factory):
    """Embeddings and tokens of a 7-clip corpus (real Whisper tiny.en + a random event encoder,
    k-means tokenizers, as tests/test_ter_events.py builds them), as 1 part and as 3 parts."""
    from agrepa.teachers.cache import embed_manifest, gather_embeddings
    from agrepa.teachers.registry import build_teacher
    from agrepa.tokenizers.streams import encode_manifest, fit_stream, gather_tokens
    from test_eval_corpus import make_corpus
    from test_ter_events import random_events_dir

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("shards")
    corpus = make_corpus(root)
    cfg = small_cfg()
    manifest = root / "manifest_train.csv"
    write_manifest(read_manifest(corpus["manifest"]).assign(split="train"), manifest)
    teachers = {"semantic": build_teacher(cfg, "semantic"),
                "acoustic": build_teacher(cfg, "acoustic", random_events_dir(root / "events", cfg))}
    for role, t in teachers.items():
        embed_manifest(cfg, role, manifest, root / "one" / role, teacher=t)
        for k in range(3):
            embed_manifest(cfg, role, manifest, root / "three" / role, teacher=t, part=k, parts=3)
        gather_embeddings(cfg, role, manifest, root / "three" / role, 3)
    tok = {}
    for stream, role in (("speech", "semantic"), ("audio", "acoustic"), ("beats", "acoustic")):
        tok[stream] = root / "tok" / stream
        fit_stream(cfg, stream, manifest, tok[stream], features=root / "one" / role)
    for tc in ("A", "B"):
        kw = dict(speech_model=tok["speech"], audio_model=tok["audio"], beats_model=tok["beats"] if tc == "B" else None,
                  semantic=root / "one" / "semantic", acoustic=root / "one" / "acoustic")
        encode_manifest(cfg, tc, manifest, root / "one" / f"tokens_{tc}", **kw)
        for k in range(3):
            encode_manifest(cfg, tc, manifest, root / "three" / f"tokens_{tc}", **kw, part=k, parts=3)
        gather_tokens(cfg, manifest, root / "three" / f"tokens_{tc}", 3)
    return root


@pytest.mark.parametrize("role", ["semantic", "acoustic"])
def test_gathered_embeddings_equal_the_one_part_store_within_the_batched_tolerance(teacher_tokens, role):
    one, three = Store(teacher_tokens / "one" / role), Store(teacher_tokens / "three" / role)
    worst = assert_same_tensors(one, three, atol=EMBED_TOL)
    print(f"{role}: max |K=3 - K=1| = {worst:.3g}")
    drop = ("parts", "part")
    assert {k: v for k, v in one.meta.items() if k not in drop} == {k: v for k, v in three.meta.items() if k not in drop}
    # the embed job runs a teacher on the clips some stage reads its output of only: the semantic one on
    # the speech clips (no stage reads an audio clip's Whisper embedding at the default), the acoustic
    # one on every clip (Config B's k-means BEATs stand-in reads the speech clips' frames too)
    rows = read_manifest(teacher_tokens / "manifest_train.csv")
    domains = {"semantic": ["speech"], "acoustic": ["speech", "audio"]}[role]
    n = int(rows["domain"].isin(domains).sum())
    assert three.meta["domains"] == domains and three.meta["n_skipped"] == 7 - n
    assert sorted(three.keys()) == sorted(rows[rows["domain"].isin(domains)]["id"])
    assert three.meta["n_clips"] == len(three) == n


@pytest.mark.parametrize("tc", ["A", "B"])
def test_gathered_tokens_equal_the_one_part_store_bitwise(teacher_tokens, tc):
    one, three = Store(teacher_tokens / "one" / f"tokens_{tc}"), Store(teacher_tokens / "three" / f"tokens_{tc}")
    assert assert_same_tensors(one, three) == 0.0
    drop = ("parts", "part")
    assert {k: v for k, v in one.meta.items() if k not in drop} == {k: v for k, v in three.meta.items() if k not in drop}


def test_parts_with_no_clips_write_empty_stores_and_gather_as_the_one_part_store(teacher_tokens, tmp_path):
    """More parts than clips (K = 12 over 7 clips, and the acoustic role's parts of no embedded clip):
    the empty parts are complete stores of no clip, and every gather equals the K = 1 store (the mels':
    test_gathered_mel_store_equals_the_one_part_store with K = 8)."""
    from agrepa.teachers.cache import embed_manifest, gather_embeddings
    from agrepa.teachers.registry import build_teacher
    from agrepa.tokenizers.streams import encode_manifest, gather_tokens
    from test_ter_events import random_events_dir

    K, root = 12, teacher_tokens
    cfg = small_cfg()
    manifest = root / "manifest_train.csv"
    teacher = build_teacher(cfg, "acoustic", random_events_dir(root / "events", cfg))
    for k in range(K):
        embed_manifest(cfg, "acoustic", manifest, tmp_path / "acoustic", teacher=teacher, part=k, parts=K)
        encode_manifest(cfg, "A", manifest, tmp_path / "tokens_A", speech_model=root / "tok" / "speech",
                        audio_model=root / "tok" / "audio", semantic=root / "one" / "semantic",
                        acoustic=root / "one" / "acoustic", part=k, parts=K)
    empty = [k for k in range(K) if part_range(7, k, K)[0] == part_range(7, k, K)[1]]
    assert len(empty) == 5
    for k in empty:
        for name in ("acoustic", "tokens_A"):
            part = Store(part_dir(tmp_path / name, k, K))
            assert len(part) == 0 and (part.meta["part"]["index"], part.meta["part"]["of"]) == (k, K)
    gather_embeddings(cfg, "acoustic", manifest, tmp_path / "acoustic", K)
    gather_tokens(cfg, manifest, tmp_path / "tokens_A", K)
    drop = ("parts", "part")
    for name, tol in (("acoustic", EMBED_TOL), ("tokens_A", 0.0)):
        one, many = Store(root / "one" / name), Store(tmp_path / name)
        assert_same_tensors(one, many, atol=tol)
        assert {k: v for k, v in one.meta.items() if k not in drop} == {k: v for k, v in many.meta.items() if k not in drop}


def test_gather_refuses_parts_built_from_other_inputs(teacher_tokens, tmp_path):
    from agrepa.tokenizers.streams import gather_tokens

    src = teacher_tokens / "three" / "tokens_A"
    out = tmp_path / "tokens"
    for k in range(3):                              # copy the parts; part 2 says another tokenizer
        store = Store(part_dir(src, k, 3))
        meta = dict(store.meta)
        if k == 2:
            meta["tokenizers"] = {**meta["tokenizers"], "speech": {**meta["tokenizers"]["speech"], "fingerprint": "x"}}
        w = StoreWriter(part_dir(out, k, 3), meta=meta)
        for cid in store.keys():
            w.add(cid, store.get(cid))
        w.close()
    cfg = config.load(DEFAULT_CONFIG)
    manifest = teacher_tokens / "manifest_train.csv"
    with pytest.raises(ValueError, match="part 2 differs from part 0 in meta 'tokenizers'"):
        gather_tokens(cfg, manifest, out, 3)


# ----------------------------------------------------------------------------- readers
def regather(src: Store, out, parts: int):
    """``src`` rewritten as ``parts`` parts (sorted clip ids, contiguous) and gathered."""
    ids = sorted(src.keys())
    for k in range(parts):
        a, b = part_range(len(ids), k, parts)
        w = StoreWriter(part_dir(out, k, parts), meta={**src.meta, "part": {"index": k, "of": parts}}, shard_size=2)
        for cid in ids[a:b]:
            w.add(cid, src.get(cid))
        w.close()
    gather(out, parts, ids, dict(src.meta))
    return out


def test_training_data_reads_gathered_stores_as_the_one_piece_ones(tmp_path):
    from agrepa.training.dataset import DataPaths, TrainingData
    from test_dataset import data_paths, make_corpus, tiny_cfg

    cfg, _ = tiny_cfg(tmp_path, {"train": {"open_shards": 1}})     # ShardPool reopens across parts
    paths = make_corpus(tmp_path / "data")
    d = data_paths(paths)
    g = {name: regather(Store(getattr(d, name)), tmp_path / "g" / name, 3)
         for name in ("mels", "tokens", "semantic", "acoustic")}
    assert all("/" in s for s in Store(g["mels"]).shard_names())
    one = TrainingData(cfg, d)
    three = TrainingData(cfg, DataPaths(d.manifest, g["mels"], g["tokens"], g["semantic"], g["acoustic"]))
    assert one.ids == three.ids
    n = len(one)
    u = torch.rand(n, generator=torch.Generator().manual_seed(0))
    v = torch.rand(n, generator=torch.Generator().manual_seed(1))
    a, b = one.collate(list(range(n)), u, v), three.collate(list(range(n)), u, v)
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key
    assert len(three.pool._open) <= 1


# ----------------------------------------------------------------------------- B reads A's primary column
def test_config_b_reading_a_s_store_equals_b_encoded_from_scratch(teacher_tokens, tmp_path):
    from agrepa.tokenizers.streams import encode_manifest

    root = teacher_tokens
    cfg = config.load(DEFAULT_CONFIG)
    cfg["device"] = "cpu"
    tok = {s: root / "tok" / s for s in ("speech", "audio", "beats")}
    kw = dict(speech_model=tok["speech"], audio_model=tok["audio"], beats_model=tok["beats"],
              semantic=root / "one" / "semantic", acoustic=root / "one" / "acoustic")
    manifest = root / "manifest_train.csv"
    for k in range(2):                               # as the workflow runs it: parts reading the gathered A
        encode_manifest(cfg, "B", manifest, tmp_path / "B", **kw, part=k, parts=2, primary=root / "three" / "tokens_A")
    from agrepa.tokenizers.streams import gather_tokens
    gather_tokens(cfg, manifest, tmp_path / "B", 2)
    scratch, shared = Store(root / "one" / "tokens_B"), Store(tmp_path / "B")
    assert assert_same_tensors(scratch, shared) == 0.0
    drop = ("parts", "part")
    assert {k: v for k, v in scratch.meta.items() if k not in drop} == {k: v for k, v in shared.meta.items() if k not in drop}
    # A's store from other tokenizers (here: B's own store) is refused
    with pytest.raises(ValueError, match="must be a Config A token store"):
        encode_manifest(cfg, "B", manifest, tmp_path / "bad", **kw, primary=root / "one" / "tokens_B")
    with pytest.raises(ValueError, match="only Config B"):
        encode_manifest(cfg, "A", manifest, tmp_path / "bad", **{**kw, "beats_model": None},
                        primary=root / "one" / "tokens_A")
