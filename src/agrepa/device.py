"""Where tensors live: the device from the config, moving a batch there, CPU threads, and the
autocast precision a job runs its forward passes in (training and inference share it)."""
from __future__ import annotations

import contextlib

import torch

CONFIG_KEYS = ("device",)  # config sections this module reads

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "bf16", "fp32")


def resolve_device(cfg: dict, local_rank: int = 0) -> torch.device:
    """The config's ``device``: ``auto`` is cuda when a GPU is visible, else cpu; with cuda,
    process ``local_rank`` of a multi-process run gets ``cuda:<local_rank>``."""
    want = cfg["device"]
    if want not in DEVICES:
        raise ValueError(f"config key 'device': expected one of {list(DEVICES)}, got {want!r}")
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want == "cuda" and not torch.cuda.is_available():
        raise ValueError("config key 'device': cuda asked for but no GPU is available")
    return torch.device(f"cuda:{local_rank}") if want == "cuda" else torch.device("cpu")


def move_batch(batch: dict, device: torch.device) -> dict:
    """Every tensor of a batch dict on ``device``; other values (ids, names) unchanged."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def set_threads(n: int | None) -> None:
    """torch intra-op threads for this process (``--threads``, from the job's ``threads:``);
    None leaves torch's default."""
    if n is not None:
        if n < 1:
            raise ValueError(f"--threads: must be >= 1, got {n}")
        torch.set_num_threads(int(n))


def cpu_threads() -> int:
    """The CPU thread count this process uses (``set_threads``); CTranslate2 and onnxruntime
    sessions are given the same number as torch."""
    return torch.get_num_threads()


def autocast_dtype(precision: str, device: torch.device | str, key: str) -> torch.dtype | None:
    """The autocast dtype of a precision setting (``train.precision``, ``inference.precision``;
    ``key`` names it in the error): ``auto`` is bf16 on CUDA and none (fp32) elsewhere, ``bf16``
    and ``fp32`` force it. Only ``device.type`` is read, so no CUDA call is made."""
    if precision not in PRECISIONS:
        raise ValueError(f"{key}: expected one of {list(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else None
    return torch.bfloat16 if precision == "bf16" else None


def autocast(dtype: torch.dtype | None, device: torch.device | str):
    """The context a forward pass runs in: ``torch.autocast`` to ``dtype`` on the device's type,
    or a null context (plain fp32) when ``dtype`` is None (:func:`autocast_dtype`)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def full_precision(device: torch.device | str):
    """A context that turns an enclosing autocast off (the computations that need fp32)."""
    return torch.autocast(torch.device(device).type, enabled=False)
