"""What each token stream reads, and so which teacher frames a store must keep.

A stream's tokenizer reads either 16 kHz audio (the pretrained kinds ``s3-onnx`` and
``beats-tokenizer``) or the frames [T', D] of one teacher role (``kmeans``, ``repcodec``)
that ``agrepa teacher embed`` stores (:mod:`agrepa.teachers.cache`). Which clips' frames
it reads, by domain (:mod:`agrepa.tokenizers.streams`)::

    stream   role       fit on (train split)        encoded for
    speech   semantic   speech clips                speech clips
    audio    acoustic   audio clips                 audio clips
    beats    acoustic   tokens.beats.domains        every clip (Config B only)

Nothing else reads teacher frames: training, probing, sampling and evaluation read the
``pooled`` embedding (:mod:`agrepa.training.dataset`) or run a teacher themselves
(:mod:`agrepa.evaluation.embeddings`). :func:`frames_read` turns this table and the
config into the domains whose frames the embed job writes. The table lives in the teachers
stage, below the tokenizers (which import it), so the embed job can ask it.
"""
from __future__ import annotations

from ..config import DOMAINS

# config keys frames_read reads (so a teacher-embedding rule reruns when a reader appears or goes)
CONFIG_KEYS = ("token_configs", "tokens.speech.kind", "tokens.audio.kind", "tokens.beats.kind")

FEATURE_ROLE = {"speech": "semantic", "audio": "acoustic", "beats": "acoustic"}
AUDIO_KINDS = ("s3-onnx", "beats-tokenizer")   # pretrained tokenizers that read 16 kHz audio


def reads_frames(kind: str) -> bool:
    """Whether a tokenizer of ``kind`` reads teacher frames (not audio)."""
    return kind not in AUDIO_KINDS


def frame_streams(cfg: dict, role: str) -> list[str]:
    """The configured streams whose tokenizer reads the ``role`` teacher's frames
    (``beats`` only when Config B is among ``token_configs``)."""
    out = []
    for stream, r in FEATURE_ROLE.items():
        if r != role or not reads_frames(cfg["tokens"][stream]["kind"]):
            continue
        if stream == "beats" and "B" not in cfg["token_configs"]:
            continue
        out.append(stream)
    return out


def frames_read(cfg: dict, role: str) -> tuple[str, ...]:
    """The domains whose clips' ``role`` teacher frames a configured stage reads (module
    doc): the embed job stores ``frames`` for these clips only; ``()``: for none (the store
    holds ``pooled`` alone)."""
    if role not in set(FEATURE_ROLE.values()):
        raise ValueError(f"teacher role {role!r}: expected one of {sorted(set(FEATURE_ROLE.values()))}")
    domains = set()
    for stream in frame_streams(cfg, role):
        domains |= set(DOMAINS) if stream == "beats" else {stream}
    return tuple(d for d in DOMAINS if d in domains)
