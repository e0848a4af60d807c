"""Flow-matching backbones (one file per architecture) with per-layer gates."""
from .dit import DiT, build_model

__all__ = ["DiT", "build_model"]
