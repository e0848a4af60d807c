"""Stage 7: evaluation (ASR/WER, embeddings/FAD, MOS, speaker similarity, metrics, listening test)."""
