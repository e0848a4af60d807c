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

``pooled`` of a clip is read only with the teacher of the clip's own domain (speech: semantic,
audio: acoustic; :func:`pooled_read`), so the embed job runs a teacher only on the clips of
:func:`embedded_domains` (the domains of ``pooled_read`` and ``frames_read``).
"""
from __future__ import annotations

from ..config import DOMAIN_TEACHER, DOMAINS

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


def check_role(role: str) -> None:
    """A ValueError unless ``role`` is a teacher role (semantic, acoustic)."""
    if role not in set(FEATURE_ROLE.values()):
        raise ValueError(f"teacher role {role!r}: expected one of {sorted(set(FEATURE_ROLE.values()))}")


def frames_read(cfg: dict, role: str) -> tuple[str, ...]:
    """The domains whose clips' ``role`` teacher frames a configured stage reads (module
    doc): the embed job stores ``frames`` for these clips only; ``()``: for none (the store
    holds ``pooled`` alone)."""
    check_role(role)
    domains = set()
    for stream in frame_streams(cfg, role):
        domains |= set(DOMAINS) if stream == "beats" else {stream}
    return tuple(d for d in DOMAINS if d in domains)


#: the teacher whose ``pooled`` embedding a clip of each domain is aligned to (the training
#: stage's table, :data:`agrepa.config.DOMAIN_TEACHER`)
POOLED_ROLE = DOMAIN_TEACHER


def pooled_read(cfg: dict, role: str) -> tuple[str, ...]:
    """The domains whose clips' ``role`` teacher ``pooled`` embedding a configured stage reads.

    Every reader of ``pooled`` reads it through :class:`agrepa.training.dataset.TrainingData`
    (``emb_semantic`` / ``emb_acoustic`` of a batch) and only at the rows of the domain whose
    teacher it is (:data:`POOLED_ROLE`), at every config (the table is code, not config):

    - REPA (``training/objectives.py`` ``REPAHeads.per_sample``) and BiT-C (``_per_domain_cos``):
      ``emb_<DOMAIN_TEACHER[d]>`` at the domain-``d`` rows only;
    - the LASP probe (``probing/probes.py`` ``probe_checkpoint``): speech batches score against
      ``emb_semantic``, audio batches against ``emb_acoustic``; FoG-A and gradnorm read no embedding;
    - ``agrepa heldout`` (FM loss only), RR (``training/similarity.py``: tokens and hidden states),
      seed 003's RSA (``evaluation/rsa.py``: the token store, and a teacher it runs itself),
      FAD / TER / evaluation (``evaluation/embeddings.py``, ``ter.py``: they run a teacher on audio),
      seed 004's caching and the reports read no teacher store.

    So the other domain's ``pooled`` is never read; ``TrainingData.embedding`` gives zeros for a
    clip its store lacks (as it always has). ``cfg`` is taken for the signature of
    :func:`frames_read` (no config key changes the answer today)."""
    check_role(role)
    return tuple(d for d in DOMAINS if POOLED_ROLE[d] == role)


def embedded_domains(cfg: dict, role: str) -> tuple[str, ...]:
    """The domains whose clips the ``role`` embed job runs its teacher on: those of
    :func:`pooled_read` and of :func:`frames_read` (a tokenizer may read the frames of the other
    domain's clips: Config B's k-means BEATs stand-in reads every clip's acoustic frames). The
    other domain's clips are skipped: not embedded, not in the store."""
    read = set(pooled_read(cfg, role)) | set(frames_read(cfg, role))
    return tuple(d for d in DOMAINS if d in read)
