"""Predicted MOS: DNSMOS (Reddy et al. 2022) from the ``speechmos`` wheel, for speech.

``eval.mos.speech = dnsmos``: every clip is resampled to 16 kHz (DNSMOS's rate), clipped to
[-1, 1] (the level is not changed: DNSMOS is level-sensitive), and scored by
``speechmos.dnsmos.run`` with the non-personalised model. It returns per clip

* ``mos_ovrl``: the OVRL score of the SIG/BAK/OVRL model (``sig_bak_ovr.onnx``), and
* ``mos_p808``: the ITU-T P.808 model's score (``model_v8.onnx``),

each averaged over 9.01 s windows (a shorter clip is tiled to 9.01 s by speechmos).

General audio has no MOS predictor here (DNSMOS models speech quality); ``eval.mos.audio = none``
gives ``None`` with the reason :data:`NO_AUDIO_MOS`.
"""
from __future__ import annotations

import numpy as np


CONFIG_KEYS = ("eval.mos",)  # config sections this module reads

MOS_SAMPLE_RATE = 16000
NO_AUDIO_MOS = ("no MOS predictor is configured for general audio (DNSMOS predicts speech quality); "
                "set eval.mos.audio to a predictor to score it")


class DNSMOS:
    name = "dnsmos"

    def __init__(self):
        import importlib.metadata as md

        from speechmos import dnsmos  # noqa: F401  (fails early if the wheel is missing)

        self.version = md.version("speechmos")

    def describe(self) -> str:
        return f"DNSMOS (speechmos {self.version}: sig_bak_ovr.onnx + model_v8.onnx)"

    def score(self, wave: np.ndarray, sample_rate: int) -> dict[str, float]:
        """``{"mos_ovrl", "mos_p808"}`` of one mono clip."""
        from speechmos import dnsmos

        from ..audio import resample

        w = np.asarray(wave, dtype=np.float32)
        if w.ndim != 1 or w.size == 0:
            raise ValueError(f"dnsmos: expected a non-empty mono waveform, got shape {w.shape}")
        x = np.clip(resample(w, sample_rate, MOS_SAMPLE_RATE), -1.0, 1.0).astype(np.float32)
        out = dnsmos.run(x, MOS_SAMPLE_RATE)
        return {"mos_ovrl": float(out["ovrl_mos"]), "mos_p808": float(out["p808_mos"])}


def build_mos(cfg: dict, domain: str):
    """The predictor ``eval.mos.<domain>`` names, or ``None`` for ``none``."""
    kind = cfg["eval"]["mos"][domain]
    if kind in (None, "none"):
        return None
    if kind == "dnsmos":
        return DNSMOS()
    raise ValueError(f"eval.mos.{domain}: unknown MOS predictor {kind!r} (dnsmos | none)")
