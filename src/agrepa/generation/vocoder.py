"""Vocoders: log-mel spectrogram [T, n_mels] (the Vocos front end of :mod:`agrepa.audio`) -> waveform.

Two vocoders, chosen by ``sample.vocoder``:

``vocos``
    The pretrained Vocos (Siuzdak 2023) the paper uses. ``sample.vocos_model`` is either a
    local directory holding ``config.yaml`` + ``pytorch_model.bin`` exactly as
    ``charactr/vocos-mel-24khz`` ships them, or a Hugging Face hub id (downloaded by the
    ``vocos`` package; the embedded default never does this). The config may only name
    classes from the ``vocos`` package, and the weights are read with
    ``torch.load(weights_only=True)`` (no pickled code).

``griffinlim``
    The embedded default: invert the log-mel without a neural network::

        mel = exp(log_mel)                                 (power-1 magnitude mel)
        S   = InverseMelScale(mel)                         (least squares, >= 0; HTK, no norm)
        wav = GriffinLim(S, n_iter=sample.griffinlim_iters, power=1)

    with the STFT parameters of the ``audio:`` section. The random initial phase is drawn
    under a fixed torch seed (``sample.seed``), so the output is deterministic.

Both return float32 mono audio at ``audio.sample_rate`` (24 kHz).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
import torchaudio
import yaml


CONFIG_KEYS = ("audio", "sample")  # config sections this module reads

log = logging.getLogger(__name__)

#: The published ``charactr/vocos-mel-24khz`` config.yaml (``dim`` etc. overridable for tests).
VOCOS_MEL_24KHZ = {
    "feature_extractor": {"class_path": "vocos.feature_extractors.MelSpectrogramFeatures",
                          "init_args": {"sample_rate": 24000, "n_fft": 1024, "hop_length": 256,
                                        "n_mels": 100, "padding": "center"}},
    "backbone": {"class_path": "vocos.models.VocosBackbone",
                 "init_args": {"input_channels": 100, "dim": 512, "intermediate_dim": 1536, "num_layers": 8}},
    "head": {"class_path": "vocos.heads.ISTFTHead",
             "init_args": {"dim": 512, "n_fft": 1024, "hop_length": 256, "padding": "center"}},
}


class Vocoder:
    """Base class: ``name``, ``sample_rate`` and :meth:`__call__` (log-mel [T, n_mels] -> wave [N])."""

    name = "vocoder"
    sample_rate = 24000

    def __call__(self, mel: torch.Tensor | np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"vocoder": self.name, "sample_rate": self.sample_rate}


def _as_mel(mel: torch.Tensor | np.ndarray, n_mels: int) -> torch.Tensor:
    """A log-mel [T, n_mels] as float32 [n_mels, T]; validates the shape."""
    m = torch.as_tensor(np.asarray(mel) if not torch.is_tensor(mel) else mel).detach().float().cpu()
    if m.dim() != 2 or m.shape[1] != n_mels or m.shape[0] < 1:
        raise ValueError(f"vocoder: expected a log-mel [T, {n_mels}], got shape {tuple(m.shape)}")
    if not torch.isfinite(m).all():
        raise ValueError("vocoder: log-mel contains NaN or inf")
    return m.T.contiguous()


class GriffinLimVocoder(Vocoder):
    """exp -> InverseMelScale -> GriffinLim (see module docstring)."""

    name = "griffinlim"

    def __init__(self, cfg_audio: dict, n_iter: int, seed: int = 0):
        self.sample_rate = int(cfg_audio["sample_rate"])
        self.n_mels = int(cfg_audio["n_mels"])
        self.n_iter = int(n_iter)
        self.seed = int(seed)
        n_fft, hop = int(cfg_audio["n_fft"]), int(cfg_audio["hop_length"])
        win = int(cfg_audio["win_length"])
        if float(cfg_audio["power"]) != 1.0:
            raise ValueError(f"audio.power: Griffin-Lim inversion here expects a magnitude mel (power 1), "
                             f"got {cfg_audio['power']}")
        self.inverse_mel = torchaudio.transforms.InverseMelScale(
            n_stft=n_fft // 2 + 1, n_mels=self.n_mels, sample_rate=self.sample_rate)
        self.griffinlim = torchaudio.transforms.GriffinLim(
            n_fft=n_fft, n_iter=self.n_iter, win_length=win, hop_length=hop, power=1.0)

    @torch.no_grad()
    def __call__(self, mel: torch.Tensor | np.ndarray) -> np.ndarray:
        m = _as_mel(mel, self.n_mels)
        spec = self.inverse_mel(torch.exp(m)).clamp(min=0.0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            wave = self.griffinlim(spec)
        return wave.numpy().astype(np.float32)

    def describe(self) -> dict:
        return {"vocoder": self.name, "sample_rate": self.sample_rate, "n_iter": self.n_iter}


class VocosVocoder(Vocoder):
    """A Vocos model (``vocos.Vocos``) decoding log-mels."""

    name = "vocos"

    def __init__(self, model, source: str):
        self.model = model.eval()
        self.source = source
        fe = model.feature_extractor
        self.sample_rate = int(fe.mel_spec.sample_rate)
        self.n_mels = int(fe.mel_spec.n_mels)

    @classmethod
    def from_directory(cls, directory: str | os.PathLike) -> "VocosVocoder":
        """Load ``config.yaml`` + ``pytorch_model.bin`` (the layout of charactr/vocos-mel-24khz)."""
        from vocos import Vocos

        directory = Path(directory)
        cfg_path, weights = directory / "config.yaml", directory / "pytorch_model.bin"
        for p in (cfg_path, weights):
            if not p.exists():
                raise FileNotFoundError(f"{p}: Vocos model file not found")
        try:
            spec = yaml.safe_load(cfg_path.read_text())
        except yaml.YAMLError as err:
            raise ValueError(f"{cfg_path}: not valid YAML ({err})") from None
        for part in ("feature_extractor", "backbone", "head"):
            cls_path = (spec or {}).get(part, {}).get("class_path", "")
            if not str(cls_path).startswith("vocos."):
                raise ValueError(f"{cfg_path}: {part}.class_path must name a class of the vocos package, "
                                 f"got {cls_path!r}")
        if spec["feature_extractor"]["class_path"] != "vocos.feature_extractors.MelSpectrogramFeatures":
            raise ValueError(f"{cfg_path}: only mel-spectrogram Vocos models can decode our mels")
        model = Vocos.from_hparams(str(cfg_path))
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(f"{weights}: not a readable Vocos state dict ({err})") from None
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise ValueError(f"{weights}: weights do not fit {cfg_path} ({err})") from None
        return cls(model, str(directory))

    @classmethod
    def from_spec(cls, spec: str) -> "VocosVocoder":
        """A local directory, else a hub id (``Vocos.from_pretrained``)."""
        if Path(spec).is_dir():
            return cls.from_directory(spec)
        if Path(spec).exists() or spec.startswith((".", "/")):
            raise FileNotFoundError(f"{spec}: Vocos model directory not found")
        from vocos import Vocos

        log.info("loading Vocos %s from the Hugging Face hub", spec)
        return cls(Vocos.from_pretrained(spec), spec)

    @torch.no_grad()
    def __call__(self, mel: torch.Tensor | np.ndarray) -> np.ndarray:
        m = _as_mel(mel, self.n_mels)
        return self.model.decode(m[None])[0].numpy().astype(np.float32)

    def describe(self) -> dict:
        return {"vocoder": self.name, "sample_rate": self.sample_rate, "model": self.source}


def save_vocos(model, directory: str | os.PathLike, spec: dict) -> Path:
    """Write a Vocos model in the charactr layout (``config.yaml`` + ``pytorch_model.bin``)."""
    from .. import io

    directory = Path(directory)
    io.write_text(directory / "config.yaml", yaml.safe_dump(spec, sort_keys=False))
    io.torch_save(directory / "pytorch_model.bin", model.state_dict())
    return directory


def build_vocoder(cfg: dict) -> Vocoder:
    """The vocoder ``sample.vocoder`` names (``griffinlim`` | ``vocos``)."""
    kind = cfg["sample"]["vocoder"]
    audio = cfg["audio"]
    if kind == "griffinlim":
        return GriffinLimVocoder(audio, cfg["sample"]["griffinlim_iters"],
                                 seed=cfg["sample"]["seed"])
    if kind == "vocos":
        voc = VocosVocoder.from_spec(str(cfg["sample"]["vocos_model"]))
        if voc.sample_rate != int(audio["sample_rate"]) or voc.n_mels != int(audio["n_mels"]):
            raise ValueError(f"sample.vocos_model: Vocos expects {voc.n_mels} mels at {voc.sample_rate} Hz, "
                             f"the audio config has {audio['n_mels']} at {audio['sample_rate']} Hz")
        return voc
    raise ValueError(f"sample.vocoder: unknown vocoder {kind!r} (expected griffinlim or vocos)")
