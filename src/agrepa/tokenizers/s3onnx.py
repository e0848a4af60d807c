"""CosyVoice's supervised semantic speech tokenizer (S3) from its ONNX export.

``speech_tokenizer_v1.onnx`` (CosyVoice-300M) takes, as CosyVoice's front end
feeds it,

* input 0: the 128-bin Whisper log-mel of 16 kHz audio, float32 ``[1, 128, T]``
  (``whisper.log_mel_spectrogram(wave, n_mels=128)``: no 30 s padding,
  T = N // 160 frames at 100 /s);
* input 1: its length ``T``, int32 ``[1]``;

and returns the token ids (``[1, T']``, 4096 codes, 50 tokens/s for v1). Input
names are read from the session (``get_inputs()``), not assumed. CosyVoice
refuses clips over 30 s; longer audio is tokenized in consecutive 30 s pieces.

Execution provider (:func:`session_providers`): onnxruntime's
``CUDAExecutionProvider`` when the job runs on a GPU (``device`` resolves to cuda)
and the installed onnxruntime has it, else ``CPUExecutionProvider``; the choice is
logged. onnxruntime silently falls back to the CPU when its CUDA / cuDNN libraries
do not match, so after the session is built its providers are checked and a
fallback is an error (:func:`check_session_providers`). The export's batch
dimension is 1, so clips go through the session one at a time.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from .. import io
from ..teachers.whisper import whisper_log_mel

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
N_MELS = 128
MAX_SECONDS = 30
N_CODES = 4096


def s3_features(wave16k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two ONNX inputs for one clip: log-mel [1, 128, T] float32 and length [1] int32."""
    mel = whisper_log_mel(wave16k, N_MELS, pad_samples=0)[None]
    return np.ascontiguousarray(mel, dtype=np.float32), np.array([mel.shape[2]], dtype=np.int32)


CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"


def session_providers(device: str, available: list[str]) -> list[str]:
    """The providers to ask for: CUDA first (CPU behind it) when ``device`` is a GPU and
    onnxruntime offers CUDA; CPU only otherwise (logged either way)."""
    on_gpu = str(device).startswith("cuda")
    if on_gpu and CUDA in available:
        log.info("s3-onnx: onnxruntime provider %s (device %s)", CUDA, device)
        return [CUDA, CPU]
    if on_gpu:
        log.warning("s3-onnx: device %s but this onnxruntime has no %s (providers %s): running on the CPU "
                    "(install onnxruntime-gpu for the GPU)", device, CUDA, available)
    else:
        log.info("s3-onnx: onnxruntime provider %s (device %s)", CPU, device)
    return [CPU]


def check_session_providers(path, requested: list[str], active: list[str]) -> None:
    """Fail when CUDA was requested but the session runs on the CPU (onnxruntime's silent fallback)."""
    if requested[0] == CUDA and (not active or active[0] != CUDA):
        raise RuntimeError(f"{path}: asked onnxruntime for {CUDA} but the session runs on {active}: its "
                           "CUDA / cuDNN libraries do not match this onnxruntime build (see onnxruntime's "
                           "CUDA requirements), or set device: cpu")


class S3OnnxTokenizer:
    kind = "s3-onnx"

    def __init__(self, path: str | os.PathLike, threads: int = 1, k: int = N_CODES, device: str = "cpu"):
        self.path = Path(path) if path else None
        if self.path is None or not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: CosyVoice speech tokenizer ONNX file not found "
                                    "(set tokens.speech.onnx_path to speech_tokenizer_v1.onnx)")
        import onnxruntime

        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.providers = session_providers(device, list(onnxruntime.get_available_providers()))
        try:
            self.session = onnxruntime.InferenceSession(str(self.path), sess_options=opts,
                                                        providers=self.providers)
        except Exception as err:  # onnxruntime raises its own exception types
            raise ValueError(f"{self.path}: not a loadable ONNX model ({err})") from None
        check_session_providers(self.path, self.providers, list(self.session.get_providers()))
        inputs = self.session.get_inputs()
        if len(inputs) != 2:
            raise ValueError(f"{self.path}: expected 2 inputs (features, length), found {len(inputs)}")
        self.input_names = [i.name for i in inputs]
        self.k = int(k)
        self.sha256 = io.sha256_file(self.path)

    def encode_wave(self, wave16k: np.ndarray) -> np.ndarray:
        """Token ids (int64 [T']) of one 16 kHz clip."""
        wave16k = np.asarray(wave16k, dtype=np.float32).reshape(-1)
        step = MAX_SECONDS * SAMPLE_RATE
        out = []
        for start in range(0, len(wave16k), step):
            feat, length = s3_features(wave16k[start: start + step])
            tokens = self.session.run(None, {self.input_names[0]: feat, self.input_names[1]: length})[0]
            out.append(np.asarray(tokens).reshape(-1).astype(np.int64))
        codes = np.concatenate(out)
        if codes.size and (codes.min() < 0 or codes.max() >= self.k):
            raise ValueError(f"{self.path}: produced ids outside [0, {self.k}) -- wrong tokens.speech.k?")
        return codes
