"""The teacher registry: :func:`build_teacher` builds the teacher that a role (``semantic`` /
``acoustic``) names in the config (``teachers.<role>.name``: ``whisper``, ``beats`` or ``events``)."""
from __future__ import annotations

import logging
import os
from typing import Callable

from ..device import resolve_device
from .base import ROLES, Teacher
from .beats import BeatsTeacher
from .events import EventsTeacher
from .whisper import WhisperTeacher

CONFIG_KEYS = ("audio", "device", "teachers.{role}")  # config sections this module reads

log = logging.getLogger(__name__)


def role_config(cfg: dict, role: str) -> dict:
    if role not in ROLES:
        raise ValueError(f"teacher role {role!r}: expected one of {ROLES}")
    return cfg["teachers"][role]


def _build_whisper(cfg: dict, tcfg: dict, teacher_dir: str | os.PathLike | None) -> Teacher:
    return WhisperTeacher.from_config(tcfg, device=str(resolve_device(cfg)))


def _build_beats(cfg: dict, tcfg: dict, teacher_dir: str | os.PathLike | None) -> Teacher:
    ckpt = tcfg["checkpoint"] or teacher_dir
    if not ckpt:
        raise KeyError("teachers.<role>.checkpoint: the beats teacher needs a checkpoint path")
    return BeatsTeacher.from_checkpoint(ckpt, device=str(resolve_device(cfg)), frames=tcfg["beats_frames"])


def _build_events(cfg: dict, tcfg: dict, teacher_dir: str | os.PathLike | None) -> Teacher:
    if teacher_dir is None:
        raise ValueError("events teacher: pass --teacher-dir (the output of `agrepa teacher train`)")
    return EventsTeacher.load(teacher_dir, cfg_audio=cfg["audio"], device=str(resolve_device(cfg)))


TEACHERS: dict[str, Callable[[dict, dict, str | os.PathLike | None], Teacher]] = {
    "whisper": _build_whisper,
    "beats": _build_beats,
    "events": _build_events,
}


def build_teacher(cfg: dict, role: str, teacher_dir: str | os.PathLike | None = None) -> Teacher:
    """The teacher ``teachers.<role>.name`` names, built from ``teachers.<role>``."""
    tcfg = role_config(cfg, role)
    name = tcfg["name"]
    if name not in TEACHERS:
        raise KeyError(f"teachers.{role}.name: unknown teacher {name!r} (known: {sorted(TEACHERS)})")
    teacher = TEACHERS[name](cfg, tcfg, teacher_dir)
    log.info("teacher %s (%s): dim %d, %.4g frames/s", role, teacher.name, teacher.dim, teacher.frame_rate)
    return teacher
