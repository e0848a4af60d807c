"""Benchmark: bytes per clip of every per-clip store, before vs after "stores keep what is read".

Builds the stores of a config on its synthetic corpus (default: the embedded default
with ``config/test.yaml``'s 60-clip corpus; seconds on a CPU) -- ``agrepa data synth``,
``data mels``, the events teacher when the acoustic teacher is ``events``, and each
teacher's embedding store twice: with the layout before (every clip's ``frames`` in
float32, :data:`agrepa.teachers.cache.FULL_FP32`) and with the config's own
(:func:`agrepa.teachers.cache.store_layout`: frames only for the clips a configured
tokenizer reads, in ``teachers.frames_dtype``). Or, with ``--results DIR``, reads the
stores an existing results directory holds (after only). Prints, per store: clips,
bytes on disk per clip (shards + index) and per tensor name (from the safetensors
headers), before, after and after / before.

``--precision`` adds the evidence for the frames' dtype: the stream tokenizers fitted on
the float32 frames (as ``agrepa tokens fit``) encode each store's clips from the float32
frames and from the same frames rounded to float16 and to bfloat16; printed: ids
compared, the fraction that flips, the max |rounding error| and max |x|. And for the mel
store: the max |error| of float16 mels, raw and in normalised units ((mel - mean) / std,
what training regresses).

``--paper`` prints the paper-scale estimate of the teacher stores (its basis in the
output: clip counts, 10-s windows, the teachers' frame rates and widths).

    python benchmarks/bench_store_bytes.py --precision --paper
    python benchmarks/bench_store_bytes.py --results results      # an existing run's stores
"""
from __future__ import annotations

import argparse
import json
import math
import struct
import tempfile
from pathlib import Path

import torch

from agrepa import config as C
from agrepa.cli import main as agrepa
from agrepa.store import SEP, Store
from agrepa.teachers.cache import FULL_FP32, embed_manifest, store_layout

REPO = Path(__file__).resolve().parents[1]
DEFAULT = [str(REPO / "config" / "config.yaml"), str(REPO / "config" / "test.yaml")]
ROLES = ("semantic", "acoustic")


def header_bytes(shard: Path) -> dict[str, int]:
    """Bytes of tensor data per tensor name (the part after ``::``) in one safetensors file."""
    with open(shard, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    out: dict[str, int] = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        a, b = info["data_offsets"]
        name = key.split(SEP, 1)[1]
        out[name] = out.get(name, 0) + (b - a)
    return out


def store_bytes(directory: Path) -> dict:
    """Clips, total bytes on disk (shards + index.json) and data bytes per tensor name."""
    store = Store(directory)
    files = [directory / s for s in store.shard_names()] + [directory / "index.json"]
    per_name: dict[str, int] = {}
    for shard in files[:-1]:
        for k, v in header_bytes(shard).items():
            per_name[k] = per_name.get(k, 0) + v
    return {"clips": len(store), "bytes": sum(f.stat().st_size for f in files), "tensors": per_name,
            "meta": {k: store.meta.get(k) for k in ("frames_domains", "frames_dtype")}}


def fmt(x: float) -> str:
    return f"{x:,.0f}"


def build(cfg_paths: list[str], sets: list[str], work: Path) -> tuple[dict, dict[str, Path]]:
    args = sum((["--config", p] for p in cfg_paths), []) + sum((["--set", s] for s in sets), []) + ["--threads", "2"]
    cfg = C.load(cfg_paths, overrides=sets)
    manifest = work / "data" / "manifest.csv"
    if not manifest.exists():
        assert agrepa(["data", "synth", *args, "--out", str(work / "data")]) == 0
    if not (work / "mels" / "index.json").exists():
        assert agrepa(["data", "mels", *args, "--manifest", str(manifest), "--out", str(work / "mels")]) == 0
    teacher_dir = None
    if cfg["teachers"]["acoustic"]["name"] == "events":
        teacher_dir = work / "events"
        if not (teacher_dir / "model.safetensors").exists():
            assert agrepa(["teacher", "train", *args, "--manifest", str(manifest), "--out", str(teacher_dir)]) == 0
    dirs = {"mels": work / "mels"}
    for role in ROLES:
        td = teacher_dir if role == "acoustic" else None
        embed_manifest(cfg, role, manifest, work / f"emb_{role}_before", teacher_dir=td, layout=FULL_FP32)
        embed_manifest(cfg, role, manifest, work / f"emb_{role}", teacher_dir=td)
        dirs[f"emb_{role}_before"], dirs[f"emb_{role}"] = work / f"emb_{role}_before", work / f"emb_{role}"
    return cfg, dirs


def report(dirs: dict[str, Path]) -> None:
    print(f"{'store':<22}{'clips':>6}{'before B/clip':>15}{'after B/clip':>14}{'after/before':>14}   "
          "after, per tensor (B/clip) [frames domains, dtype]")
    for name in ("mels", *ROLES):
        after_dir = dirs["mels"] if name == "mels" else dirs.get(f"emb_{name}")
        if after_dir is None or not (after_dir / "index.json").exists():
            continue
        after = store_bytes(after_dir)
        before_dir = dirs["mels"] if name == "mels" else dirs.get(f"emb_{name}_before")
        before = store_bytes(before_dir) if before_dir and (before_dir / "index.json").exists() else None
        n = after["clips"]
        a = after["bytes"] / n
        b = before["bytes"] / before["clips"] if before else float("nan")
        parts = ", ".join(f"{k} {fmt(v / n)}" for k, v in sorted(after["tensors"].items()))
        extra = "" if name == "mels" else f" [{after['meta']['frames_domains']}, {after['meta']['frames_dtype']}]"
        label = "mels (unchanged)" if name == "mels" else f"teacher {name}"
        print(f"{label:<22}{n:>6}{fmt(b):>15}{fmt(a):>14}{a / b:>14.3f}   {parts}{extra}")


def precision(cfg_paths: list[str], sets: list[str], work: Path, dirs: dict[str, Path]) -> None:
    from agrepa.corpora.mels import load_stats
    from agrepa.teachers.readers import FEATURE_ROLE, reads_frames
    from agrepa.tokenizers.streams import fit_stream, load_tokenizer

    cfg = C.load(cfg_paths, overrides=sets)
    manifest = work / "data" / "manifest.csv"
    print("\nfrozen tokenizers fitted on the float32 frames; encode float32 vs rounded frames (every stored clip)")
    print(f"{'stream':<8}{'kind':<10}{'dtype':<10}{'ids':>8}{'flipped':>9}{'fraction':>10}"
          f"{'max|err|':>11}{'max|x|':>9}")
    for stream, role in FEATURE_ROLE.items():
        kind = cfg["tokens"][stream]["kind"]
        if not reads_frames(kind):
            continue
        out = work / f"tok_{stream}"
        if not (out / "config.json").exists():
            fit_stream(cfg, stream, manifest, out, features=dirs[f"emb_{role}_before"])
        tok = load_tokenizer(out)
        frames = Store(dirs[f"emb_{role}_before"]).load("frames")
        big = max(float(f.abs().max()) for f in frames.values())
        for dtype in (torch.float16, torch.bfloat16):
            n = flip = 0
            err = 0.0
            for f in frames.values():
                g = f.to(dtype).float()
                a, b = tok.encode_frames(f), tok.encode_frames(g)
                n, flip, err = n + a.numel(), flip + int((a != b).sum()), max(err, float((g - f).abs().max()))
            print(f"{stream:<8}{kind:<10}{str(dtype).split('.')[1]:<10}{n:>8}{flip:>9}{flip / n:>10.4%}"
                  f"{err:>11.3g}{big:>9.3g}")
        # end to end: the tokenizer fitted on the store as written now (half-precision frames of the read
        # domains) encoding those frames, against the float32 fit on the float32 frames
        after = Store(dirs[f"emb_{role}"])
        refit = work / f"tok_{stream}_after_{after.meta['frames_dtype']}"
        try:
            if not (refit / "config.json").exists():
                fit_stream(cfg, stream, manifest, refit, features=dirs[f"emb_{role}"])
        except ValueError as e:          # the stream's train clips have no frames in this store
            print(f"{stream:<8}{kind:<10}{'refit':<10}  not fitted on the new store ({str(e).split(';')[0][-60:]})")
            continue
        again = work / f"tok_{stream}_again"           # the float32 fit repeated: is the fit deterministic?
        if not (again / "config.json").exists():
            fit_stream(cfg, stream, manifest, again, features=dirs[f"emb_{role}_before"])
        seed1 = work / f"tok_{stream}_seed1"           # the float32 fit at tokens.seed + 1: a seed's worth of change
        if not (seed1 / "config.json").exists():
            cfg1 = {**cfg, "tokens": {**cfg["tokens"], "seed": int(cfg["tokens"]["seed"]) + 1}}
            fit_stream(cfg1, stream, manifest, seed1, features=dirs[f"emb_{role}_before"])
        dt = after.meta["frames_dtype"]
        for label, other, source in ((dt + "*", load_tokenizer(refit), after), ("float32**", load_tokenizer(again), None),
                                     ("seed+1***", load_tokenizer(seed1), None)):
            a_all, b_all = [], []
            for cid in after.keys():
                if after.has(cid, "frames"):
                    a_all.append(tok.encode_frames(frames[cid]))
                    b_all.append(other.encode_frames(source.get(cid)["frames"] if source else frames[cid]))
            a, b = torch.cat(a_all), torch.cat(b_all)
            n, flip = a.numel(), int((a != b).sum())
            # up to relabelling: each code of the refit mapped to the float32 fit's code it most often meets
            k = int(max(a.max(), b.max())) + 1
            joint = torch.bincount(b * k + a, minlength=k * k).reshape(k, k)
            agree = int(joint.max(1).values.sum())
            print(f"{stream:<8}{kind:<10}{label:<10}{n:>8}{flip:>9}{flip / max(n, 1):>10.4%}"
                  f"   agree up to relabelling {agree / max(n, 1):.4%}")
    print("* refitted on the new store's frames; ** refitted on the same float32 frames (the fit's own "
          "repeatability); *** the float32 fit at tokens.seed + 1")
    mels = Store(dirs["mels"])
    mean, std = load_stats(mels, int(cfg["audio"]["n_mels"]))
    raw = norm = 0.0
    lo, hi = math.inf, -math.inf
    for m in mels.load("mel").values():
        e = (m.half().float() - m).abs()
        raw, norm = max(raw, float(e.max())), max(norm, float((e / std).max()))
        lo, hi = min(lo, float(m.min())), max(hi, float(m.max()))
    print(f"\nmel store (float32, kept): float16 would err by up to {raw:.3g} (log-mel in [{lo:.3g}, {hi:.3g}]), "
          f"{norm:.3g} in normalised units (std {float(std.min()):.3g}-{float(std.max()):.3g})")


def paper_estimate() -> None:
    """Teacher stores at paper.yaml (docstring basis)."""
    clips = {"speech": 281_241, "audio": 2_000_000}   # LibriSpeech 960 h utterances; AudioSet unbalanced (approx.)
    window = 10.0                                      # audio.max_seconds: every clip cut to its first 10 s
    speech_mean = 9.6                                  # LibriSpeech mean 12.3 s cut to 10 s: ~9.6 s (estimate)
    secs = {"speech": speech_mean, "audio": window}
    teachers = {"semantic": ("Whisper-large-v3", 1280, 50.0), "acoustic": ("BEATs patches", 768, 49.6)}
    paper = C.load([str(REPO / "config" / "config.yaml"), str(REPO / "config" / "paper.yaml")])
    print("\npaper.yaml estimate (basis: 281 k LibriSpeech + 2.0 M AudioSet clips, 10-s windows, speech mean ~9.6 s "
          "after the cut; Whisper-large-v3 1280 x 50 /s, BEATs 768 x 49.6 patches /s; tensor data only)")
    print(f"{'store':<34}{'before B/clip':>15}{'after B/clip':>14}{'before TB':>11}{'after TB':>10}")
    for role, (name, dim, rate) in teachers.items():
        layout = store_layout(paper, role)
        width = {"float16": 2, "bfloat16": 2, "float32": 4}[layout.frames_dtype]
        before = after = 0.0
        for d, n in clips.items():
            frames = rate * secs[d] * dim
            before += n * (frames * 4 + dim * 4)
            after += n * ((frames * width if d in layout.frames_domains else 0) + dim * 4)
        total = sum(clips.values())
        print(f"{role + ' (' + name + ')':<34}{fmt(before / total):>15}{fmt(after / total):>14}"
              f"{before / 1e12:>11.2f}{after / 1e12:>10.3f}   frames: {list(layout.frames_domains)}, "
              f"{layout.frames_dtype}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", action="append", help="config files (default: config.yaml + test.yaml)")
    ap.add_argument("--set", action="append", default=[], help="config overrides")
    ap.add_argument("--work", help="working directory (default: a temporary one)")
    ap.add_argument("--results", help="report the stores of this results directory instead of building")
    ap.add_argument("--precision", action="store_true", help="tokenizer-id flips of float16 / bfloat16 frames")
    ap.add_argument("--paper", action="store_true", help="paper-scale estimate of the teacher stores")
    a = ap.parse_args()
    torch.set_num_threads(2)
    if a.results:
        r = Path(a.results)
        report({"mels": r / "data" / "mels", **{f"emb_{role}": r / "embeddings" / role for role in ROLES}})
    else:
        cfg_paths = a.config or DEFAULT
        work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="bench_store_bytes."))
        work.mkdir(parents=True, exist_ok=True)
        _, dirs = build(cfg_paths, a.set, work)
        print(f"stores of {' + '.join(Path(p).name for p in cfg_paths)} in {work}")
        report(dirs)
        if a.precision:
            precision(cfg_paths, a.set, work, dirs)
    if a.paper:
        paper_estimate()


if __name__ == "__main__":
    main()
