"""Predicted MOS: a registry of predictors by name (``eval.mos.speech`` / ``eval.mos.audio``).

``dnsmos`` (speech; the embedded default)
    DNSMOS (Reddy et al. 2022) from the ``speechmos`` wheel: every clip is resampled to 16 kHz,
    clipped to [-1, 1] (the level is not changed: DNSMOS is level-sensitive), and scored by
    speechmos's DNSMOS with the non-personalised model (as ``speechmos.dnsmos.run``; its ONNX
    sessions on the job's threads): ``mos_ovrl`` = OVRL of the SIG/BAK/OVRL model (``sig_bak_ovr.onnx``), ``mos_p808`` = the ITU-T P.808 model's score
    (``model_v8.onnx``), each averaged over 9.01 s windows (a shorter clip is tiled).
``utmos`` (speech; paper scale, what F5-TTS reports)
    The UTMOS22 strong learner (Saeki et al. 2022) through the ``utmos-pytorch`` package's
    fairseq-free model class (``UTMOSModel``: wav2vec 2.0 base + domain and listener embeddings +
    BLSTM + projection); the official ``fairseq``-based ``utmos`` package needs fairseq, which does not
    install with Python 3.11 / torch 2.11. Weights from ``eval.mos.utmos_checkpoint``: the strong
    learner's Lightning state dict (keys ``feature_extractors.*``, ``output_layers.*``), either as a plain
    state dict (the converted ``utmos_state_dict.pt``) or a checkpoint dict with ``state_dict``, read with
    ``torch.load(weights_only=True)`` and loaded strictly into a model whose encoder depth and FFN width
    are read from the state dict (:func:`encoder_shape`; the published weights: 12 x 3072, the
    package's default). 16 kHz input, main-listener inference
    (domain 0, judge 288): ``mos_ovrl = 2 * mean_t(frame scores) + 3``; no ``mos_p808``.
``audiobox`` (general audio; paper scale)
    Meta's Audiobox Aesthetics (Tjandra et al. 2025) through the ``audiobox-aesthetics`` package's
    ``AesMultiOutput`` (WavLM base + per-axis heads) from the official ``checkpoint.pt`` at
    ``eval.mos.aesthetics_checkpoint`` (``state_dict`` with ``model.`` prefixes, ``model_cfg``,
    ``target_transform``; read with ``weights_only=True``, loaded strictly; encoder depth and FFN width
    from the state dict as for UTMOS). 16 kHz mono, 10 s windows
    (zero-padded, masked), window scores weighted by their real length, de-normalised per axis as the
    package's ``AesPredictor`` does. ``mos_ovrl`` = PQ (production quality, the axis closest to an
    overall quality score); the four axes CE, CU, PC, PQ go to the per-clip records; no ``mos_p808``.
``none``
    No predictor: rows are null with the reason (:data:`NO_AUDIO_MOS` for general audio).

Every predictor returns ``{"mos_ovrl", "mos_p808", ...}`` per clip (None where it has no such score).
"""
from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Callable

import numpy as np

CONFIG_KEYS = ("eval.mos",)  # config sections this module reads

MOS_SAMPLE_RATE = 16000
NO_AUDIO_MOS = ("no MOS predictor is configured for general audio (DNSMOS predicts speech quality); "
                "set eval.mos.audio to a predictor (audiobox) to score it")


def _mono_16k(wave: np.ndarray, sample_rate: int, name: str) -> np.ndarray:
    from ..audio import resample

    w = np.asarray(wave, dtype=np.float32)
    if w.ndim != 1 or w.size == 0:
        raise ValueError(f"{name}: expected a non-empty mono waveform, got shape {w.shape}")
    return np.clip(resample(w, sample_rate, MOS_SAMPLE_RATE), -1.0, 1.0).astype(np.float32)


class DNSMOS:
    name = "dnsmos"

    def __init__(self):
        import importlib.metadata as md
        import importlib.util

        if importlib.util.find_spec("speechmos") is None:
            raise ImportError("DNSMOS needs the speechmos wheel (pip install speechmos)")
        self.version = md.version("speechmos")
        self._model = None

    def describe(self) -> str:
        return f"DNSMOS (speechmos {self.version}: sig_bak_ovr.onnx + model_v8.onnx)"

    def model(self):
        """speechmos's non-personalised DNSMOS (what ``dnsmos.run`` builds), its two ONNX sessions
        on the job's thread count (``torch.get_num_threads``, set by ``--threads``) without spinning
        idle threads, instead of ONNX Runtime's default of every core."""
        if self._model is None:
            import onnxruntime as ort
            import torch
            from speechmos import dnsmos

            options = ort.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()
            options.inter_op_num_threads = 1
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            folder = Path(dnsmos.__file__).parent / "dnsmos_models"
            model = dnsmos.DNSMOS.__new__(dnsmos.DNSMOS)
            model.onnx_sess, model.p808_onnx_sess = (
                ort.InferenceSession(str(folder / name), options, providers=["CPUExecutionProvider"])
                for name in ("sig_bak_ovr.onnx", "model_v8.onnx"))
            self._model = model
        return self._model

    def score(self, wave: np.ndarray, sample_rate: int) -> dict[str, float]:
        """``{"mos_ovrl", "mos_p808"}`` of one mono clip."""
        out = self.model()(_mono_16k(wave, sample_rate, "dnsmos"), MOS_SAMPLE_RATE, False)
        return {"mos_ovrl": float(out["ovrl_mos"]), "mos_p808": float(out["p808_mos"])}


def _read_state(path, what: str) -> dict:
    import torch

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: {what} checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickled objects outside the allow-list, truncated files
        raise ValueError(f"{path}: cannot read the {what} checkpoint with weights_only=True ({err}); "
                         f"save its state dict alone") from None


def _load_strict(model, state: dict, path, what: str) -> None:
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(f"{path}: not a {what} state dict: missing {missing[:4]} ({len(missing)}), "
                         f"unexpected {unexpected[:4]} ({len(unexpected)})")
    model.load_state_dict(state, strict=True)


def encoder_shape(state: dict, prefix: str, path) -> dict:
    """``encoder_layers`` and ``encoder_ffn_embed_dim`` of the wav2vec 2.0 / WavLM encoder under
    ``prefix`` in a state dict (the packages build a fixed base encoder; a checkpoint says its own)."""
    pattern = re.compile(re.escape(prefix) + r"encoder\.layers\.(\d+)\.fc1\.weight$")
    ffn = {int(m.group(1)): int(state[k].shape[0]) for k in state if (m := pattern.match(k))}
    if not ffn or sorted(ffn) != list(range(len(ffn))) or len(set(ffn.values())) != 1:
        raise ValueError(f"{path}: no encoder layers {prefix}encoder.layers.<i>.fc1.weight of one width")
    return {"encoder_layers": len(ffn), "encoder_ffn_embed_dim": ffn[0]}


@contextlib.contextmanager
def _swapped(module, name: str, value):
    """``module.<name>`` is ``value`` while the block runs (the packages read their encoder
    config from a module global when a model is built)."""
    before = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, before)


UTMOS_ENCODER = "feature_extractors.0.ssl_model."   # state-dict prefix of the wav2vec 2.0 encoder


def utmos_model(encoder: dict | None = None):
    """``UTMOSModel`` with the package's wav2vec 2.0 base, or the ``encoder`` shape of
    :func:`encoder_shape` (random weights)."""
    import utmos_pytorch.utmos_torch as ut

    if not encoder:
        return ut.UTMOSModel()
    base = ut.Wav2Vec2Config
    with _swapped(ut, "Wav2Vec2Config", lambda: base(**encoder)):
        return ut.UTMOSModel()


def aesthetics_model(model_cfg: dict, target_transform: dict, encoder: dict | None = None):
    """``AesMultiOutput`` from a checkpoint's ``model_cfg`` with the package's WavLM base, or the
    ``encoder`` shape of :func:`encoder_shape` (random weights)."""
    import audiobox_aesthetics.model.aes as aes
    from audiobox_aesthetics.model.wavlm import WavLMConfig

    kw = {k: model_cfg[k] for k in AudioboxAesthetics.CFG_KEYS}
    if not encoder:
        return aes.AesMultiOutput(**kw, target_transform=target_transform)
    with _swapped(aes, "DEFAULT_AUDIO_CFG", WavLMConfig({**aes.DEFAULT_AUDIO_CFG.__dict__, **encoder})):
        return aes.AesMultiOutput(**kw, target_transform=target_transform)


class UTMOS:
    """UTMOS22 strong learner (module docstring)."""

    name = "utmos"
    JUDGE = 288   # the main listener id of the strong learner's inference

    def __init__(self, checkpoint, device: str = "cpu"):
        state = _read_state(checkpoint, "UTMOS")
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        self.model = utmos_model(encoder_shape(state, UTMOS_ENCODER, checkpoint))
        _load_strict(self.model, state, checkpoint, "UTMOS22 strong learner")
        self.model.to(device).eval()
        self.device, self.source = device, str(checkpoint)

    def describe(self) -> str:
        return f"UTMOS22 strong ({Path(self.source).name}; utmos-pytorch model)"

    def score(self, wave: np.ndarray, sample_rate: int) -> dict:
        import torch

        x = torch.from_numpy(_mono_16k(wave, sample_rate, "utmos"))[None, None].to(self.device)
        with torch.no_grad():
            out = self.model(x, domains=torch.zeros(1, dtype=torch.int, device=self.device),
                             judge_id=torch.full((1,), self.JUDGE, dtype=torch.int, device=self.device))
        return {"mos_ovrl": float(out.mean(dim=1).squeeze() * 2 + 3), "mos_p808": None}


class AudioboxAesthetics:
    """Audiobox Aesthetics (module docstring)."""

    name = "audiobox"
    AXES = ("CE", "CU", "PC", "PQ")
    CFG_KEYS = ("proj_num_layer", "proj_ln", "proj_act_fn", "proj_dropout", "nth_layer", "use_weighted_layer_sum",
                "precision", "normalize_embed", "output_dim")

    def __init__(self, checkpoint, device: str = "cpu"):
        from audiobox_aesthetics.model.aes import Normalize

        ck = _read_state(checkpoint, "Audiobox Aesthetics")
        if not isinstance(ck, dict) or not {"state_dict", "model_cfg", "target_transform"} <= set(ck):
            raise ValueError(f"{checkpoint}: an Audiobox Aesthetics checkpoint holds state_dict, model_cfg and "
                             f"target_transform")
        missing = [k for k in self.CFG_KEYS if k not in ck["model_cfg"]]
        if missing:
            raise ValueError(f"{checkpoint}: model_cfg lacks {missing}")
        state = {re.sub(r"^model\.", "", k): v for k, v in ck["state_dict"].items()}
        self.model = aesthetics_model(ck["model_cfg"], ck["target_transform"],
                                      encoder_shape(state, "wavlm_model.", checkpoint))
        _load_strict(self.model, state, checkpoint, "Audiobox Aesthetics")
        self.model.to(device).eval()
        self.norm = {a: Normalize(**ck["target_transform"][a]) for a in self.AXES}
        self.device, self.source = device, str(checkpoint)

    def describe(self) -> str:
        return f"Audiobox Aesthetics ({Path(self.source).name}; mos_ovrl = PQ)"

    def score(self, wave: np.ndarray, sample_rate: int) -> dict:
        import torch
        from audiobox_aesthetics.infer import make_inference_batch

        x = torch.from_numpy(_mono_16k(wave, sample_rate, "audiobox"))[None]
        wavs, masks, weights, _ = make_inference_batch([x], 10, 10, sample_rate=MOS_SAMPLE_RATE)
        with torch.inference_mode():
            preds = self.model({"wav": torch.stack(wavs).to(self.device), "mask": torch.stack(masks).to(self.device)})
        w = torch.tensor(weights, dtype=torch.float64)
        axes = {a: float((self.norm[a].inverse(preds[a].double().cpu()) * w).sum() / w.sum()) for a in self.AXES}
        return {"mos_ovrl": axes["PQ"], "mos_p808": None, **{f"aes_{a.lower()}": v for a, v in axes.items()}}


def _checkpoint(cfg: dict, key: str) -> str:
    path = cfg["eval"]["mos"][key]
    if not path:
        raise KeyError(f"eval.mos.{key}: the predictor needs a local checkpoint path")
    return path


PREDICTORS: dict[str, Callable[[dict, str], object]] = {
    "dnsmos": lambda cfg, device: DNSMOS(),
    "utmos": lambda cfg, device: UTMOS(_checkpoint(cfg, "utmos_checkpoint"), device),
    "audiobox": lambda cfg, device: AudioboxAesthetics(_checkpoint(cfg, "aesthetics_checkpoint"), device),
}


def build_mos(cfg: dict, domain: str):
    """The predictor ``eval.mos.<domain>`` names, or ``None`` for ``none``."""
    from ..device import resolve_device

    kind = cfg["eval"]["mos"][domain]
    if kind in (None, "none"):
        return None
    if kind not in PREDICTORS:
        raise ValueError(f"eval.mos.{domain}: unknown MOS predictor {kind!r} ({' | '.join(PREDICTORS)} | none)")
    return PREDICTORS[kind](cfg, str(resolve_device(cfg)))
