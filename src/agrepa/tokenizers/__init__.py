"""Stage 3: discrete tokens: fit the stream tokenizers, encode clips (:mod:`.streams`), the unified vocabulary (:mod:`.vocab`)."""
