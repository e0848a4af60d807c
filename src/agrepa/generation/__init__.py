"""Stage 6: sampling the test split (ODE sampler) and vocoding."""
