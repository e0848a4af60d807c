"""Stage 4: the two-phase training protocol (loop, data, objectives, checkpoints, processes)."""
