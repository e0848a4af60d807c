"""Stage 2: frozen teachers (Whisper, BEATs, the embedded event encoder) and the embedding cache.

:mod:`.base` holds the teacher interface, :mod:`.registry` builds a teacher by name."""
