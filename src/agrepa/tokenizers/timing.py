"""Token streams in time: which tokens belong to which mel frames.

A token store (``agrepa tokens encode``) holds per clip a tensor ``tokens`` whose
rows are *positions* on a regular time grid of ``position_rate[domain]`` rows per
second, starting at the clip's first sample: row ``i`` covers
``[i / r, (i + 1) / r)`` seconds. Config A: one column (the domain's own stream,
``[N]``). Config B: two columns (``[N, 2]``: the primary stream and the BEATs
stream, each placed on the grid by time, :func:`pair_by_time`).

``granularity[domain]`` = the grid positions of one indivisible step: 1 for
ordinary streams; 8 for a BEATs patch stream (8 frequency patches per 16-frame
time step, :mod:`agrepa.teachers.beats`); a crop never splits a step.

Mel frame ``f`` covers ``[f / fr, (f + 1) / fr)`` seconds (``fr`` = sample rate /
hop = 93.75 /s), so grid position ``i`` starts at mel frame ``frame_at(i) =
round(i * fr / r)``.

Crops are chosen on the token grid first and the mel crop is derived from them
(:func:`token_window`): tokens ``[a, b)`` and mel frames ``[frame_at(a),
frame_at(b))``. The two spans then agree to within half a mel frame (5.3 ms), at
every stream's rate, and the model's linear interpolation of the ``b - a`` tokens
onto the crop's frames puts every token on its own frames.

A clip whose token duration ``N / r`` and mel duration ``T / fr`` disagree by
more than one token step is rejected (:func:`duration_mismatch`): its tokens do
not describe its audio. The test is ``|N - T r / fr| >= g + 1`` (``g`` the
granularity): a step, plus less than one position for what every frame-based
tokenizer legitimately loses or adds at the end -- BEATs drops the last partial
16-frame step and its 25 ms analysis window (up to 0.165 s = 8.3 positions at
50 /s, 1.03 steps at 6.25 /s), and the centred mel has one extra frame.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Grid:
    """The token grid of one domain: ``rate`` positions per second in steps of
    ``granularity`` positions; ``mel_rate`` mel frames per second."""

    rate: float
    granularity: int
    mel_rate: float

    def __post_init__(self):
        if not self.rate > 0 or not self.mel_rate > 0:
            raise ValueError(f"token grid: rates must be positive, got {self.rate} and {self.mel_rate}")
        if int(self.granularity) < 1:
            raise ValueError(f"token grid: granularity must be >= 1, got {self.granularity}")

    def frame_at(self, i: int) -> int:
        """The mel frame at which grid position ``i`` starts."""
        return int(round(i * self.mel_rate / self.rate))

    def positions(self, seconds: float) -> int:
        """The whole steps that fit in ``seconds``, in positions (at least one step).
        Their mel span is at most ``ceil(seconds * mel_rate)`` frames."""
        g = int(self.granularity)
        return max(g, int(math.floor(seconds * self.rate / g + 1e-9)) * g)


def duration_mismatch(n_tokens: int, n_frames: int, grid: Grid) -> str | None:
    """Why a clip's tokens do not match its mel (None when they do, see module doc)."""
    expected = n_frames * grid.rate / grid.mel_rate
    if abs(int(n_tokens) - expected) >= int(grid.granularity) + 1:
        return (f"{n_tokens} tokens at {grid.rate:g}/s ({n_tokens / grid.rate:.3f} s) but {n_frames} mel frames "
                f"({n_frames / grid.mel_rate:.3f} s): expected {expected:.1f} tokens, at most "
                f"{grid.granularity} (one step) off")
    return None


def token_window(n_tokens: int, n_frames: int, grid: Grid, length: int | None,
                 u: float | None = None) -> tuple[int, int, int, int]:
    """``(a, b, f0, f1)``: tokens ``[a, b)`` and mel frames ``[f0, f1)`` of one crop.

    ``length``: crop length in positions (a multiple of the granularity; None or
    at least the clip: the whole clip). ``u`` in [0, 1) picks the start among the
    step-aligned starts that keep the crop inside both the tokens and the mel
    (``floor(u * n_starts)``); None starts at 0. A crop is ``f0 = frame_at(a)``,
    ``f1 = frame_at(b)``. The whole clip is ``(0, N, 0, min(T, frame_at(N)))``:
    mel frames past the last token (a tokenizer's partial last step) are left out,
    so a window never holds more than ``frame_at(length)`` frames.
    """
    N, T, g = int(n_tokens), int(n_frames), int(grid.granularity)
    if N < 1 or T < 1:
        raise ValueError(f"token_window: need tokens and frames, got {N} tokens and {T} frames")
    if length is not None and length % g:
        raise ValueError(f"token_window: length {length} is not a multiple of the granularity {g}")
    # the last step-aligned end whose mel frame lies inside the clip
    last_end = min(N, int(math.floor(T * grid.rate / grid.mel_rate + 1e-9)))
    while last_end > 0 and grid.frame_at(last_end) > T:
        last_end -= 1
    if length is None or length > last_end:
        return 0, N, 0, min(T, grid.frame_at(N))
    n_starts = (last_end - length) // g + 1
    k = 0 if u is None else min(int(float(u) * n_starts), n_starts - 1)
    a = k * g
    b = a + length
    return a, b, grid.frame_at(a), grid.frame_at(b)


def pair_by_time(primary: Tensor, beats: Tensor, rate_primary: float, rate_beats: float) -> tuple[Tensor, float]:
    """Config B: both streams on one grid, ``([N, 2], grid rate)``.

    The grid is the faster stream's (the primary's when equal): position ``i``
    (centre ``(i + 0.5) / r``) holds, from each stream ``k`` at rate ``r_k``, its
    token ``min(floor((i + 0.5) r_k / r), N_k - 1)`` -- the one under the
    position's centre (the last one past a stream's end). With equal rates this
    is ``[p_i, b_i]`` (the authors' 1:1 interleave, ``[p1, b1, p2, b2, ...]`` =
    ``pairs.reshape(-1)``); a slower stream's token repeats on every position
    it spans.
    """
    if primary.dim() != 1 or beats.dim() != 1 or not primary.numel() or not beats.numel():
        raise ValueError(f"pair_by_time: need two non-empty 1-D streams, got {tuple(primary.shape)} "
                         f"and {tuple(beats.shape)}")
    fast, rate = (primary, rate_primary) if rate_primary >= rate_beats else (beats, rate_beats)
    centres = torch.arange(fast.numel(), dtype=torch.float64) + 0.5
    cols = []
    for x, r in ((primary, rate_primary), (beats, rate_beats)):
        idx = torch.floor(centres * (float(r) / float(rate))).long().clamp(max=x.numel() - 1)
        cols.append(x[idx])
    return torch.stack(cols, dim=1), float(rate)


def grid_granularity(rates: dict[str, float], granularity: dict[str, int], grid_rate: float) -> int:
    """Positions of the grid per indivisible step of its coarsest stream:
    ``max_k round(g_k * grid_rate / r_k)`` (at least 1)."""
    return max(1, *(int(round(int(granularity[s]) * grid_rate / float(r))) for s, r in rates.items()))
