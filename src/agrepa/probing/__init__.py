"""Stage 5: probing the warm-up model (FoG-A, LASP, gradient norm) and layer selection."""
