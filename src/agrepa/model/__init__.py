"""Flow-matching backbones (one file per architecture) with per-layer gates."""
from .dit import PAD_ID, DiT, build_model

__all__ = ["PAD_ID", "DiT", "build_model"]
