"""Discrete tokens for the flow-matching model: fit tokenizers, encode clips.

Streams and their tokenizers (``tokens.<stream>.kind``):

* ``speech`` -- "S3-like": k-means on the semantic teacher's frames of the speech
  train clips (``kmeans``), or CosyVoice's S3 tokenizer from its ONNX file
  (``s3-onnx``, reads 16 kHz audio);
* ``audio``  -- "AudioSet tokenizer": a RepCodec VQ-VAE on the acoustic teacher's
  frames of the audio train clips (``repcodec``; on BEATs these are its patch
  sequence, 50 /s, as the authors feed their tokenizer);
* ``beats``  -- Config B's extra stream: BEATs' own acoustic tokenizer from its
  official checkpoint (``beats-tokenizer``, reads 16 kHz audio; the authors'
  choice, paper scale), or a stand-in: k-means on the acoustic teacher's frames of
  the train clips of ``tokens.beats.domains`` (``kmeans``, the embedded default).

A fitted tokenizer is a directory: ``config.json`` (kind, stream, k, dim,
frame_rate, granularity, the feature store's teacher and fingerprint, or the
pretrained model's path and sha256), the weights (``kmeans.safetensors`` or
``model.safetensors``; none for the pretrained kinds) and ``metrics.json``
(codebook usage perplexity on the train frames).

Encoding (:func:`encode_manifest`) writes a store with tensor ``tokens`` (int64
[N] or [N, 2], ids of the unified vocabulary, :mod:`agrepa.tokenizers.vocab`) per clip;
Config A: speech clips -> speech tokens, audio clips -> audio tokens; Config B:
each clip's primary tokens and its BEATs tokens side by side on one time grid
([N, 2], the paper's 1:1 interleaving row by row; :mod:`agrepa.tokenizers.timing`).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from .. import config as C
from ..config import DOMAINS
from .. import io
from ..batching import Throughput, longest_first, row_batches
from ..device import cpu_threads
from ..store import Store, StoreWriter, gather, merge_meta, part_metas, part_range, start_part
from ..teachers.readers import AUDIO_KINDS, FEATURE_ROLE   # stream -> teacher role; the kinds that read audio
from .kmeans import KMeans, sample_frames, usage_from_counts, usage_stats
from .repcodec import RepCodec, fit_repcodec, fit_window, repcodec_settings, sample_windows
from .timing import grid_granularity, pair_by_time
from .vocab import STREAMS, Vocab, rate_summary

CONFIG_KEYS = ("audio", "tokens")  # config sections this module reads

log = logging.getLogger(__name__)

TOKEN_CONFIGS = ("A", "B")


class Tokenizer:
    """A fitted tokenizer directory, loaded: ``encode_frames`` (teacher frames
    [T, D] -> local codes [T]) or, for s3-onnx / beats-tokenizer, ``encode_wave``
    (16 kHz audio). ``frame_rate``: tokens per second; ``granularity``: tokens per
    indivisible time step (:mod:`agrepa.tokenizers.timing`)."""

    def __init__(self, directory: Path, conf: dict, impl):
        self.directory, self.conf, self.impl = directory, conf, impl
        self.kind, self.stream = conf["kind"], conf["stream"]
        self.k, self.frame_rate = int(conf["k"]), float(conf["frame_rate"])
        self.granularity = int(conf["granularity"])
        self.input = "audio" if self.kind in AUDIO_KINDS else "frames"

    def encode_frames(self, frames: Tensor) -> Tensor:
        if self.input != "frames":
            raise ValueError(f"{self.directory}: a {self.kind} tokenizer reads audio, not teacher frames")
        return self.impl.encode(frames.float()).long()   # stores hold half-precision frames

    def encode_wave(self, wave16k: np.ndarray) -> Tensor:
        return torch.from_numpy(self.impl.encode_wave(wave16k))

    def encode_waves(self, waves16k: list[np.ndarray]) -> list[Tensor]:
        """:meth:`encode_wave` of several clips: one batch where the implementation has
        ``encode_waves`` (beats-tokenizer), clip by clip otherwise (the S3 export's batch is 1)."""
        if hasattr(self.impl, "encode_waves"):
            return [torch.from_numpy(c) for c in self.impl.encode_waves(waves16k)]
        return [self.encode_wave(w) for w in waves16k]

    def fingerprint(self) -> str:
        files = sorted(p for p in self.directory.iterdir() if p.suffix in (".json", ".safetensors")
                       and p.name != "metrics.json")
        return io.sha256_json({p.name: io.sha256_file(p) for p in files})


def load_tokenizer(directory: str | os.PathLike, threads: int = 1, device: str = "cpu") -> Tokenizer:
    directory = Path(directory)
    conf_path = directory / "config.json"
    if not conf_path.exists():
        raise FileNotFoundError(f"{conf_path}: tokenizer config missing (run `agrepa tokens fit`)")
    conf = io.read_json(conf_path, required=("kind", "stream", "k", "frame_rate", "granularity"))
    kind = conf["kind"]
    if kind == "kmeans":
        impl = KMeans.load(directory)
    elif kind == "repcodec":
        impl = RepCodec.load(directory, conf["arch"])
    elif kind == "s3-onnx":
        from .s3onnx import S3OnnxTokenizer
        impl = S3OnnxTokenizer(conf["onnx_path"], threads=threads, k=conf["k"], device=device)
        if impl.sha256 != conf["sha256"]:
            raise ValueError(f"{conf['onnx_path']}: sha256 changed since `tokens fit` ({conf_path})")
    elif kind == "beats-tokenizer":
        from .beats_tokenizer import BeatsTokenizer
        impl = BeatsTokenizer(conf["checkpoint"], device=device)
        if impl.sha256 != conf["sha256"]:
            raise ValueError(f"{conf['checkpoint']}: sha256 changed since `tokens fit` ({conf_path})")
    else:
        raise ValueError(f"{conf_path}: unknown tokenizer kind {kind!r}")
    return Tokenizer(directory, conf, impl)


# ----------------------------------------------------------------------------- fit
def train_ids(manifest, stream: str, cfg: dict) -> list[str]:
    """Clip ids a stream's tokenizer is fitted on (train split, the stream's domains)."""
    domains = {"speech": ["speech"], "audio": ["audio"]}.get(stream) or \
        list(cfg["tokens"]["beats"]["domains"])
    rows = manifest[(manifest["split"] == "train") & manifest["domain"].isin(domains)]
    return rows["id"].tolist()


def _frame_lengths(store: Store, ids: list[str]) -> tuple[list[int], int]:
    """Frames per clip and the frame width, from the store's shard headers (no frames read)."""
    missing = [i for i in ids if i not in store]
    if missing:
        raise KeyError(f"{store.dir}: no features for clip id {missing[0]!r} "
                       f"({len(missing)} manifest clips missing; re-run `agrepa teacher embed`)")
    try:
        by_id = store.shapes("frames", ids)
    except KeyError as e:
        clip = next((i for i in ids if i in store and not store.has(i, "frames")), ids[0])
        raise _no_frames(store, clip) from e
    shapes = [by_id[i] for i in ids]
    return [s[0] for s in shapes], int(shapes[0][1])


def _no_frames(store: Store, clip: str) -> ValueError:
    """The error for a store written without the frames of ``clip``: the config that built it
    had no reader of them (:func:`agrepa.teachers.readers.frames_read`)."""
    kept = store.meta.get("frames_domains")
    where = "for no clip" if kept == [] else f"for the clips of domains {kept} only"
    return ValueError(f"{store.dir}: no {store.meta.get('role')} frames for clip {clip!r} (the store keeps "
                      f"frames {where}: the config that built it had no other reader); re-run `agrepa "
                      f"teacher embed` with this config")


def fit_stream(cfg: dict, stream: str, manifest_path: str | os.PathLike, out_dir: str | os.PathLike,
               features: str | os.PathLike | None = None) -> dict:
    """Fit the ``stream`` tokenizer; write ``out_dir``/{config.json, weights, metrics.json}."""
    from ..corpora.manifest import read_manifest

    if stream not in STREAMS:
        raise ValueError(f"--stream {stream!r}: expected one of {STREAMS}")
    scfg = cfg["tokens"][stream]
    kind, k = scfg["kind"], int(scfg["k"])
    manifest = read_manifest(manifest_path)
    ids = train_ids(manifest, stream, cfg)
    if not ids:
        raise ValueError(f"{manifest_path}: no train clips for the {stream} stream")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    conf = {"kind": kind, "stream": stream, "k": k, "seed": int(cfg["tokens"]["seed"]), "n_clips": len(ids),
            "manifest_sha256": io.sha256_file(manifest_path)}
    if kind in AUDIO_KINDS:
        metrics = _fit_pretrained(cfg, stream, manifest_path, manifest, ids, conf)
    else:
        if features is None:
            raise ValueError(f"tokens fit --stream {stream}: --features STORE is required for {kind}")
        metrics = _fit_on_frames(cfg, stream, Store(features), ids, conf, out)
    metrics.update({"stream": stream, "kind": kind, **rate_summary(conf["frame_rate"], cfg["audio"])})
    io.write_json(out / "config.json", conf)
    io.write_json(out / "metrics.json", metrics)
    C.save_resolved(cfg, out)
    log.info("%s tokenizer (%s, K=%d): codebook perplexity %.2f, %d/%d codes used", stream, kind, k,
             metrics["perplexity"], metrics["used_codes"], k)
    return metrics


def _audio_tokenizer(cfg: dict, stream: str, threads: int):
    """The pretrained tokenizer ``tokens.<stream>`` names (it reads 16 kHz audio)."""
    scfg = cfg["tokens"][stream]
    kind = scfg["kind"]
    if kind == "s3-onnx":
        if stream != "speech":
            raise ValueError(f"tokens.{stream}.kind: s3-onnx is a speech tokenizer")
        from .s3onnx import S3OnnxTokenizer
        return S3OnnxTokenizer(scfg["onnx_path"], threads=threads, k=int(scfg["k"]))
    if stream != "beats":
        raise ValueError(f"tokens.{stream}.kind: beats-tokenizer is Config B's BEATs stream")
    from ..device import resolve_device
    from .beats_tokenizer import BeatsTokenizer
    return BeatsTokenizer(scfg["checkpoint"], device=str(resolve_device(cfg)))


def _fit_pretrained(cfg: dict, stream: str, manifest_path, manifest, ids: list[str], conf: dict) -> dict:
    """Nothing to fit: record the model file, its rate, and its codebook usage on the train clips
    (a seeded sample of at most ``tokens.usage_max_clips``)."""
    from .. import audio as A
    from ..corpora.manifest import resolve_path

    scfg = cfg["tokens"][stream]
    tok = _audio_tokenizer(cfg, stream, cpu_threads())
    if tok.kind == "s3-onnx":
        rate, granularity = float(scfg["onnx_token_rate"]), 1
        conf.update({"onnx_path": str(tok.path.resolve())})
    else:
        if tok.k != conf["k"]:
            raise ValueError(f"tokens.beats.k = {conf['k']}, but {tok.path} has {tok.k} codes")
        rate, granularity = tok.frame_rate, tok.granularity
        conf.update({"checkpoint": str(tok.path.resolve())})
    conf.update({"sha256": tok.sha256, "frame_rate": rate, "granularity": granularity, "dim": None,
                 "features": None})
    cap = cfg["tokens"]["usage_max_clips"]
    if cap is not None and len(ids) > int(cap):
        pick = torch.randperm(len(ids), generator=torch.Generator().manual_seed(conf["seed"]))[:int(cap)]
        ids = [ids[i] for i in sorted(pick.tolist())]
    rows = longest_first(manifest.set_index("id").loc[ids])   # the usage counts do not depend on the order
    peak = cfg["audio"]["peak_normalize"]
    codes = torch.cat([torch.from_numpy(tok.encode_wave(A.load_audio(resolve_path(manifest_path, p), 16000,
                                                                     peak=peak)))
                       for p in tqdm(rows["path"], desc=f"{tok.kind} usage", leave=False)])
    return {**usage_stats(codes, conf["k"]), "usage_clips": len(ids)}


def _fit_on_frames(cfg: dict, stream: str, store: Store, ids: list[str], conf: dict, out: Path) -> dict:
    """Fit k-means or the RepCodec VQ on the train clips' teacher frames."""
    scfg = cfg["tokens"][stream]
    kind, k, seed = scfg["kind"], conf["k"], conf["seed"]
    want = FEATURE_ROLE[stream]
    if store.meta.get("role") not in (None, want):
        raise ValueError(f"{store.dir}: holds {store.meta.get('role')} features; the {stream} "
                         f"stream is fitted on {want} features")
    for key in ("frame_rate", "granularity"):
        if key not in store.meta:
            raise KeyError(f"{store.dir / 'index.json'}: meta has no {key!r} (re-run `agrepa teacher embed`)")
    lengths, dim = _frame_lengths(store, ids)

    def read(i: int) -> Tensor:  # one clip's frames
        return store.load("frames", [ids[i]])[ids[i]].float()

    conf.update({"frame_rate": float(store.meta["frame_rate"]), "granularity": int(store.meta["granularity"]),
                 "dim": dim,
                 "features": {k_: store.meta.get(k_) for k_ in ("teacher", "fingerprint", "cache_key")}})
    if kind == "kmeans":
        x, sample = sample_frames(lengths, read, scfg["max_frames"], seed)
        model, fit_info = KMeans.fit(x, k, seed=seed, iters=int(scfg["iters"]))
        del x
        model.save(out)
        counts = torch.zeros(k, dtype=torch.long)
        for i in range(len(ids)):  # usage over every train frame, one clip at a time
            counts += torch.bincount(model.encode(read(i)), minlength=k)
        metrics = usage_from_counts(counts, k)
        metrics.update(fit_info)
        metrics.update(sample)
    elif kind == "repcodec":
        from ..device import resolve_device
        window = fit_window(scfg["window"], conf["granularity"])
        x, mask, sample = sample_windows(lengths, read, int(scfg["fit_windows"]), window, seed,
                                         conf["granularity"])
        log.info("repcodec fit: %d windows of %d frames from %d of %d train clips; %d clips shorter than the "
                 "window (%d sampled windows zero-padded, padding masked out of the loss)", sample["windows"],
                 window, sample["clips_read"], len(ids), sample["short_clips"], sample["padded_windows"])
        model, metrics = fit_repcodec(x, mask, k=k, seed=seed, device=resolve_device(cfg),
                                      **repcodec_settings(scfg))
        del x, mask
        model.save(out)
        conf["arch"] = model.arch
        metrics.update(sample)
    else:
        raise ValueError(f"tokens.{stream}.kind: unknown tokenizer kind {kind!r}")
    return metrics


# ----------------------------------------------------------------------------- encode
def store_timing(toks: dict[str, "Tokenizer"], token_config: str, cfg_audio: dict) -> dict:
    """The token store's time meta (:mod:`agrepa.tokenizers.timing`): each stream's
    own ``token_rate`` and ``granularity``, and per domain the rows of ``tokens``
    per second (``position_rate``), their ``granularity`` and ``columns`` (streams)."""
    rate = {s: t.frame_rate for s, t in toks.items()}
    gran = {s: t.granularity for s, t in toks.items()}
    position_rate, granularity, columns = {}, {}, {}
    for domain in DOMAINS:
        streams = [domain, "beats"] if token_config == "B" else [domain]
        r = max(rate[s] for s in streams)
        position_rate[domain] = r
        granularity[domain] = grid_granularity({s: rate[s] for s in streams}, gran, r)
        columns[domain] = streams
    return {"token_rate": rate, "token_granularity": gran, "position_rate": position_rate,
            "granularity": granularity, "columns": columns, "paired": token_config == "B",
            "mel_rate": rate_summary(1.0, cfg_audio)["mel_rate"]}


def _check_features(tok: Tokenizer, store: Store) -> None:
    want = (tok.conf.get("features") or {}).get("fingerprint")
    have = store.meta.get("fingerprint")
    if want and have and want != have:
        raise ValueError(f"{store.dir}: teacher fingerprint {have[:12]} differs from the one the "
                         f"{tok.stream} tokenizer in {tok.directory} was fitted on ({want[:12]})")


def primary_codes(rows: list, codes) -> dict[int, Tensor]:
    """Each row's codes from its own domain's stream (speech -> speech, audio -> audio), one
    ``codes(stream, rows)`` call per stream for the rows of that domain; keyed by row position."""
    out = {}
    for stream in DOMAINS:
        members = [i for i, row in enumerate(rows) if row["domain"] == stream]
        if members:
            out.update(zip(members, codes(stream, [rows[i] for i in members])))
    return out


def shared_primary(primary: str | os.PathLike, token_config: str, toks: dict, vocab: Vocab,
                   manifest_path: str | os.PathLike):
    """``rows -> {row position: local codes}`` read from Config A's token store ``primary`` (its
    tokens minus the domain stream's offset, which A and B share), after checking that A was
    encoded from the same manifest with the same speech and audio tokenizers."""
    if token_config != "B":
        raise ValueError("--primary: only Config B reads its primary column from Config A's store")
    store = Store(primary)
    meta, where = store.meta, store.dir / "index.json"
    if meta.get("token_config") != "A":
        raise ValueError(f"{where}: --primary must be a Config A token store, got {meta.get('token_config')!r}")
    if meta.get("manifest_sha256") != io.sha256_file(manifest_path):
        raise ValueError(f"{where}: encoded from another manifest than {manifest_path}")
    for stream in DOMAINS:
        have = (meta.get("tokenizers") or {}).get(stream, {}).get("fingerprint")
        if have != toks[stream].fingerprint():
            raise ValueError(f"{where}: its {stream} tokenizer differs from {toks[stream].directory}")
        if (meta.get("offsets") or {}).get(stream) != vocab.offsets[stream]:
            raise ValueError(f"{where}: its {stream} offset differs from Config B's vocabulary")
    log.info("tokens B: primary column read from Config A's store %s (not encoded again)", store.dir)

    def codes(rows: list) -> dict[int, Tensor]:
        got = store.load("tokens", [row["id"] for row in rows])
        return {i: got[row["id"]] - vocab.offsets[row["domain"]] for i, row in enumerate(rows)}
    return codes


def encode_manifest(cfg: dict, token_config: str, manifest_path: str | os.PathLike, out_dir: str | os.PathLike,
                    speech_model: str | os.PathLike, audio_model: str | os.PathLike,
                    beats_model: str | os.PathLike | None = None,
                    semantic: str | os.PathLike | None = None, acoustic: str | os.PathLike | None = None,
                    part: int | None = None, parts: int = 1, primary: str | os.PathLike | None = None) -> dict:
    """Tokenize every clip of the manifest into the store ``out_dir`` (tensor ``tokens``). With
    ``part`` k: only part k of ``parts`` (its contiguous slice of the manifest) into
    ``out_dir/part-...`` (:mod:`agrepa.store`; :func:`gather_tokens` writes the top-level index);
    without: the whole manifest as part 0 of 1 and its gather. ``primary`` (Config B only): Config
    A's token store, whose tokens are B's primary column (the same tokenizers, the same ids), read
    instead of encoded again, so the speech and audio streams are encoded once for A and B."""
    if part is None:
        if parts != 1:
            raise ValueError(f"parts={parts}: encode one part at a time (part=k), then gather_tokens")
        encode_part(cfg, token_config, manifest_path, out_dir, speech_model, audio_model, beats_model,
                    semantic, acoustic, part=0, parts=1, primary=primary)
        return gather_tokens(cfg, manifest_path, out_dir, 1)
    return encode_part(cfg, token_config, manifest_path, out_dir, speech_model, audio_model, beats_model,
                       semantic, acoustic, part=part, parts=parts, primary=primary)


def load_streams(cfg: dict, token_config: str, speech_model: str | os.PathLike, audio_model: str | os.PathLike,
                 beats_model: str | os.PathLike | None, semantic: str | os.PathLike | None,
                 acoustic: str | os.PathLike | None) -> tuple[dict, dict]:
    """The tokenizers of ``token_config`` (``{stream: tokenizer}``) and the teacher stores
    (``{role: Store | None}``) they read, checked: each model is of its stream, and a tokenizer
    that reads frames has its role's store with features of its width."""
    if token_config not in TOKEN_CONFIGS:
        raise ValueError(f"--token-config {token_config!r}: expected A or B")
    if token_config == "B" and beats_model is None:
        raise ValueError("--token-config B needs --beats-model")
    from ..device import resolve_device

    threads, device = cpu_threads(), str(resolve_device(cfg))
    toks = {"speech": load_tokenizer(speech_model, threads, device),
            "audio": load_tokenizer(audio_model, threads, device)}
    if token_config == "B":
        toks["beats"] = load_tokenizer(beats_model, threads, device)
    for stream, tok in toks.items():
        if tok.stream != stream:
            raise ValueError(f"{tok.directory}: a {tok.stream} tokenizer given as the {stream} model")
    stores = {"semantic": Store(semantic) if semantic else None, "acoustic": Store(acoustic) if acoustic else None}
    for stream, tok in toks.items():
        role = FEATURE_ROLE[stream]
        if tok.input == "frames":
            if stores[role] is None:
                raise ValueError(f"the {stream} tokenizer ({tok.kind}) needs --{role} STORE")
            _check_features(tok, stores[role])
    return toks, stores


def encode_part(cfg: dict, token_config: str, manifest_path: str | os.PathLike, out_dir: str | os.PathLike,
                speech_model: str | os.PathLike, audio_model: str | os.PathLike,
                beats_model: str | os.PathLike | None, semantic: str | os.PathLike | None,
                acoustic: str | os.PathLike | None, part: int, parts: int,
                primary: str | os.PathLike | None = None) -> dict:
    """Part ``part`` of ``parts`` of :func:`encode_manifest` into ``out_dir/part-...``; returns its meta."""
    from ..corpora.manifest import read_manifest, resolve_path

    toks, stores = load_streams(cfg, token_config, speech_model, audio_model, beats_model, semantic, acoustic)
    vocab = Vocab({s: t.k for s, t in toks.items()})
    shared = shared_primary(primary, token_config, toks, vocab, manifest_path) if primary else None
    manifest = read_manifest(manifest_path)
    start, stop = part_range(len(manifest), part, parts)
    manifest = manifest.iloc[start:stop]
    peak = cfg["audio"]["peak_normalize"]

    def codes(stream: str, rows: list) -> list[Tensor]:
        """Local codes of ``stream`` for a batch of manifest rows."""
        tok = toks[stream]
        if tok.input == "audio":
            from .. import audio as A
            waves = [A.load_audio(resolve_path(manifest_path, row["path"]), 16000, peak=peak) for row in rows]
            return tok.encode_waves(waves)
        store = stores[FEATURE_ROLE[stream]]
        for row in rows:
            if row["id"] not in store:
                raise KeyError(f"{store.dir}: no features for clip id {row['id']!r}")
            if not store.has(row["id"], "frames"):
                raise _no_frames(store, row["id"])
        frames = store.load("frames", [row["id"] for row in rows])
        return [tok.encode_frames(frames[row["id"]]) for row in rows]

    timing = store_timing(toks, token_config, cfg["audio"])
    meta = {"token_config": token_config, **vocab.to_meta(), **timing,
            "tokenizers": {s: {"dir": str(t.directory), "kind": t.kind, "fingerprint": t.fingerprint()}
                           for s, t in toks.items()},
            "manifest_sha256": io.sha256_file(manifest_path),
            "part": {"index": part, "of": parts, "n_clips": len(manifest)}}
    out = start_part(out_dir, part, parts)   # no index may describe shards being rewritten
    writer = StoreWriter(out, meta=meta, shard_size=int(cfg["tokens"]["shard_size"]))
    batch_size = int(cfg["tokens"]["batch_size"])
    lengths = []
    with Throughput(log, f"tokens {token_config}", len(manifest), batch_size), \
            tqdm(total=len(manifest), desc=f"tokens {token_config}") as bar:
        for batch in row_batches(longest_first(manifest), batch_size, "tokens.batch_size"):
            primary = shared(batch) if shared else primary_codes(batch, codes)
            beats = codes("beats", batch) if token_config == "B" else None
            for i, row in enumerate(batch):
                ids = vocab.to_global(row["domain"], primary[i])
                if beats is not None:
                    ids, _ = pair_by_time(ids, vocab.to_global("beats", beats[i]),
                                          toks[row["domain"]].frame_rate, toks["beats"].frame_rate)
                writer.add(row["id"], {"tokens": ids.to(torch.int64)})
                lengths.append(int(ids.shape[0]))
            bar.update(len(batch))
    writer.close()
    C.save_resolved(cfg, out)
    log.info("tokens %s: %d clips, vocab %d, mean length %.1f", token_config, len(lengths), vocab.vocab_size,
             float(np.mean(lengths)) if lengths else 0.0)
    return meta


def gather_tokens(cfg: dict, manifest_path: str | os.PathLike, out_dir: str | os.PathLike, parts: int) -> dict:
    """``out_dir/index.json`` over the ``parts`` finished parts (no tensor copied); their metas
    (token config, vocabulary, tokenizer fingerprints, manifest bytes) must agree. Returns the meta."""
    from ..corpora.manifest import read_manifest

    manifest = read_manifest(manifest_path)
    metas = part_metas(out_dir, parts)
    meta = merge_meta(metas, str(out_dir))
    if meta["manifest_sha256"] != io.sha256_file(manifest_path):
        raise ValueError(f"{out_dir}: parts encoded from another manifest than {manifest_path}; rebuild them")
    gather(out_dir, parts, manifest["id"].tolist(), meta)
    C.save_resolved(cfg, out_dir)
    log.info("tokens %s: gathered %d parts, %d clips -> %s", meta["token_config"], parts, len(manifest), out_dir)
    return {**meta, "parts": parts}
