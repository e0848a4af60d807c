"""Stage 2: frozen teachers (Whisper, BEATs, the embedded event encoder) and the embedding cache.

:mod:`.base` holds the teacher interface and the registry (:func:`~.base.build_teacher`)."""
