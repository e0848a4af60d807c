"""DiT gates: ``gates=None`` is the ordinary model bitwise; ``g_l = 0`` removes block l exactly."""
from __future__ import annotations

import pytest
import torch

from agrepa.model.dit import DiT, build_model


def _inputs(B=3, T=20, n_mels=8, vocab=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, n_mels, generator=g)
    t = torch.rand(B, generator=g)
    tokens = torch.randint(1, vocab, (B, 7), generator=g)
    tokens[0, 5:] = 0                                   # padding
    prompt = torch.randn(B, T, n_mels, generator=g)
    prompt[:, 6:] = 0
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 15:] = False
    return x, t, tokens, prompt, mask


def _model(L=4, dim=32, seed=0):
    torch.manual_seed(seed)
    m = DiT(n_layers=L, dim=dim, n_heads=2, n_mels=8, vocab_size=30, ff_mult=2).eval()
    with torch.no_grad():  # adaLN-Zero starts every block as the identity; perturb so blocks do something
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def test_gates_none_equals_ones_bitwise():
    m = _model()
    args = _inputs()
    with torch.no_grad():
        v0, h0 = m(*args[:4], mask=args[4], return_hidden=True)
        v1, h1 = m(*args[:4], mask=args[4], gates=torch.ones(4), return_hidden=True)
        v2 = m(*args[:4], mask=args[4], gates=torch.ones(3, 4))
    assert torch.equal(v0, v1) and torch.equal(v0, v2)
    assert all(torch.equal(a, b) for a, b in zip(h0, h1))


@pytest.mark.parametrize("layer", [0, 2, 3])
def test_zero_gate_removes_block_exactly(layer):
    m = _model()
    args = _inputs()
    gates = torch.ones(4)
    gates[layer] = 0
    with torch.no_grad():
        v, h = m(*args[:4], mask=args[4], gates=gates, return_hidden=True)
        v_full, h_full = m(*args[:4], mask=args[4], return_hidden=True)
    # hidden index l+1 is the output of block l (0-based): unchanged from its input
    assert torch.equal(h[layer + 1], h[layer])
    assert torch.equal(h[layer], h_full[layer])                 # earlier layers untouched
    assert not torch.equal(v, v_full)                           # the block did matter
    # the same as skipping the block by hand
    state, ctx = m.prepare(*args[:4], mask=args[4])
    hh = state.h
    for i, block in enumerate(m.blocks):
        if i != layer:
            hh = hh + block.update(hh, ctx)
    assert torch.allclose(m.output(type(state)(hh), ctx), v, atol=1e-6)


def test_per_sample_gates_and_build_model():
    m = _model()
    x, t, tokens, prompt, mask = _inputs()
    gates = torch.ones(3, 4)
    gates[1, 1] = 0
    with torch.no_grad():
        v = m(x, t, tokens, prompt, mask=mask, gates=gates)
        v_all = m(x, t, tokens, prompt, mask=mask)
        g1 = torch.ones(4)
        g1[1] = 0
        v_abl = m(x, t, tokens, prompt, mask=mask, gates=g1)
    assert torch.equal(v[0], v_all[0]) and torch.equal(v[2], v_all[2])
    assert torch.allclose(v[1], v_abl[1], atol=1e-6)
    with pytest.raises(ValueError, match="gates"):
        m(x, t, tokens, prompt, gates=torch.ones(5))
    with pytest.raises(ValueError, match="token ids"):
        m(x, t, tokens + 100, prompt)
    cfg = {"model": {"n_layers": 3, "dim": 16, "n_heads": 2, "ff_mult": 4, "dropout": 0.0, "token_dim": None,
                     "token_l2_normalize": True},
           "audio": {"n_mels": 8}}
    assert build_model(cfg, 11).n_layers == 3


def test_token_front_end_config_a_and_b():
    """Config A: E[id]; Config B: the authors' per-domain W_d [E[p]; E[b]] at each position.
    Then linear interpolation to the real mel frames and unit length per frame."""
    from agrepa.model.tokens import TokenEmbedding, interpolate_tokens

    torch.manual_seed(0)
    V, D, audio_offset = 30, 8, 12                      # speech ids 1..11, audio 12..19, beats 20..29
    single = TokenEmbedding(V, D, l2_normalize=True)
    tok = torch.tensor([[3, 5, 7, 0], [14, 15, 0, 0]])
    n_frames = torch.tensor([10, 6])
    out = single(tok, n_frames, 12)
    ref = interpolate_tokens(single.table(tok), torch.tensor([3, 2]), n_frames, 12)
    assert torch.allclose(out, torch.nn.functional.normalize(ref, dim=-1))
    norms = out.norm(dim=-1)
    assert torch.allclose(norms[0, :10], torch.ones(10)) and torch.allclose(norms[1, :6], torch.ones(6))
    assert norms[0, 10:].abs().sum() == 0 and norms[1, 6:].abs().sum() == 0    # padding frames stay zero

    paired = TokenEmbedding(V, D, paired=True, audio_offset=audio_offset)
    pairs = torch.tensor([[[3, 21], [5, 21], [7, 22]], [[14, 25], [15, 26], [0, 0]]])
    out = paired(pairs, n_frames, 12)
    E = paired.table.weight
    fused = torch.stack([paired.fuse["speech"](torch.cat([E[pairs[0, :, 0]], E[pairs[0, :, 1]]], -1)),
                         paired.fuse["audio"](torch.cat([E[pairs[1, :, 0]], E[pairs[1, :, 1]]], -1))])
    ref = interpolate_tokens(fused, torch.tensor([3, 2]), n_frames, 12)
    assert torch.allclose(out, ref, atol=1e-6)
    # a speech sample's conditioning depends on the speech projection only, an audio sample's on the audio one
    out[0].sum().backward(retain_graph=True)
    assert paired.fuse["speech"].weight.grad.abs().sum() > 0 and paired.fuse["audio"].weight.grad.abs().sum() == 0
    assert paired.fuse["speech"].weight.shape == (D, 2 * D) and paired.fuse["speech"].bias is None
    with pytest.raises(ValueError, match=r"\[B, N, 2\]"):
        paired(tok, n_frames, 12)
    with pytest.raises(ValueError, match=r"\[B, N\] \(Config A\)"):
        single(pairs, n_frames, 12)
    with pytest.raises(ValueError, match="audio id"):
        TokenEmbedding(V, D, paired=True)


def test_dit_takes_config_b_rows():
    from agrepa.model.dit import build_model

    cfg = {"model": {"n_layers": 2, "dim": 16, "n_heads": 2, "ff_mult": 2, "dropout": 0.0, "token_dim": None,
                     "token_l2_normalize": True}, "audio": {"n_mels": 8}}
    m = build_model(cfg, 30, {"paired": True, "audio_offset": 12}).eval()
    x, t, _, prompt, mask = _inputs(B=2)
    pairs = torch.randint(1, 12, (2, 5, 2))
    pairs[:, :, 1] += 18                                  # BEATs ids
    v = m(x, t, pairs, prompt, mask)
    assert v.shape == x.shape and torch.isfinite(v).all()
    h0 = m.prepare(x, t, pairs, prompt, mask)[0].h
    assert not torch.allclose(h0, m.prepare(x, t, pairs.flip(1), prompt, mask)[0].h)   # the token order matters
