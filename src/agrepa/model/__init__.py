"""Flow-matching backbones (one file per architecture) behind one gated-unit interface
(:mod:`agrepa.model.backbone`): ``model.arch`` = dit | voicebox | cosyvoice | f5."""
from .backbone import ARCHS, Backbone, Recipe, Stream, architecture, frame_mask, recipe
from ..config import PAD_ID
from .dit import DiT


def build_model(cfg: dict, vocab_size: int, token_layout: dict | None = None) -> Backbone:
    """The backbone of ``model.arch`` with its sizes from the config (``model.*`` for the
    DiT, ``model.<arch>`` for the others), ``audio.n_mels`` mel bins and the token store's
    ``token_layout`` (``{"paired": bool, "audio_offset": int}``; None: Config A)."""
    from . import cosyvoice, dit, f5, voicebox

    builders = {"dit": dit.build_model, "voicebox": voicebox.build, "cosyvoice": cosyvoice.build, "f5": f5.build}
    return builders[architecture(cfg)](cfg, vocab_size, token_layout)


__all__ = ["ARCHS", "PAD_ID", "Backbone", "DiT", "Recipe", "Stream", "architecture", "build_model", "frame_mask",
           "recipe"]
