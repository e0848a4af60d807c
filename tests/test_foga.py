"""FoG-A: the shared-work implementation equals the naive loop of gated forwards."""
import pytest
import torch
from torch import nn

from agrepa.probing.foga import foga, foga_naive, foga_per_sample, relative_deviation
from agrepa.model.dit import DiT

N_MELS, VOCAB = 8, 24


def make_model(n_layers=5, dim=32, seed=0, std=0.2) -> DiT:
    """A tiny DiT whose adaLN and final layers are NOT zero (else every block is an identity)."""
    torch.manual_seed(seed)
    m = DiT(n_layers=n_layers, dim=dim, n_heads=2, n_mels=N_MELS, vocab_size=VOCAB, dropout=0.1)
    for block in m.blocks:
        nn.init.normal_(block.ada[1].weight, std=std)
        nn.init.normal_(block.ada[1].bias, std=std)
    for layer in (m.final.ada[1], m.final.linear):
        nn.init.normal_(layer.weight, std=std)
        nn.init.normal_(layer.bias, std=std)
    return m


def make_inputs(B=4, T=19, N=7, seed=1):
    """Random inputs with padding: different mel and token lengths per sample."""
    g = torch.Generator().manual_seed(seed)
    x_t = torch.randn(B, T, N_MELS, generator=g)
    t = torch.rand(B, generator=g)
    lengths = torch.tensor([T, T - 6, 9, T - 2][:B])
    mask = torch.arange(T)[None] < lengths[:, None]
    tokens = torch.randint(1, VOCAB, (B, N), generator=g)
    tokens[1, 5:] = 0
    tokens[2, 3:] = 0
    prompt = torch.randn(B, T, N_MELS, generator=g) * (torch.arange(T)[None, :, None] < 4)
    return x_t, t, tokens, prompt, mask


def test_foga_equals_naive_gated_forwards_with_padding():
    m = make_model()
    inputs = make_inputs()
    fast = foga(m, *inputs)
    slow = foga_naive(m, *inputs)
    assert fast.shape == (m.n_layers,)
    assert torch.allclose(fast, slow, atol=1e-5, rtol=0), (fast, slow)
    # the model is not trivial: every layer matters somewhat, and not all equally
    assert bool((fast > 1e-3).all()) and float(fast.max() - fast.min()) > 1e-3


@pytest.mark.parametrize("max_streams", [1, 2, 3])
def test_stream_chunking_does_not_change_scores(max_streams):
    m = make_model()
    inputs = make_inputs()
    assert torch.allclose(foga(m, *inputs, max_streams=max_streams), foga(m, *inputs), atol=1e-6, rtol=0)


def test_padding_does_not_leak_into_scores():
    m = make_model()
    x_t, t, tokens, prompt, mask = make_inputs()
    a = foga_per_sample(m, x_t, t, tokens, prompt, mask)
    x_t2 = x_t.clone()
    x_t2[~mask] = 1e3                     # garbage in padded frames
    b = foga_per_sample(m, x_t2, t, tokens, prompt, mask)
    assert torch.allclose(a, b, atol=1e-5)


def test_zeroed_residual_update_scores_zero():
    m = make_model()
    l = 3                                  # block 3 (1-based): adaLN-Zero gates all 0 -> update is 0
    nn.init.zeros_(m.blocks[l - 1].ada[1].weight)
    nn.init.zeros_(m.blocks[l - 1].ada[1].bias)
    s = foga(m, *make_inputs())
    assert float(s[l - 1]) == 0.0
    assert bool((s[torch.arange(m.n_layers) != l - 1] > 0).all())


def test_invariant_to_batch_order():
    m = make_model()
    x_t, t, tokens, prompt, mask = make_inputs()
    perm = torch.tensor([2, 0, 3, 1])
    a = foga(m, x_t, t, tokens, prompt, mask)
    b = foga(m, x_t[perm], t[perm], tokens[perm], prompt[perm], mask[perm])
    assert torch.allclose(a, b, atol=1e-6, rtol=0)


def test_restores_training_mode_and_needs_no_grad():
    m = make_model()
    m.train()
    s = foga(m, *make_inputs())
    assert m.training and not s.requires_grad


def test_shared_work_runs_half_the_block_evaluations():
    """Efficient FoG-A evaluates L(L+1)/2 block-samples; naive runs L+1 full forwards (counted at
    each block's attention, which every evaluation of the block runs once)."""
    m = make_model(n_layers=6)
    B = 4
    seen = []
    hooks = [b.attn.register_forward_hook(lambda mod, inp, out: seen.append(out.shape[0])) for b in m.blocks]
    inputs = make_inputs(B=B)
    foga(m, *inputs)
    fast = sum(seen)
    seen.clear()
    foga_naive(m, *inputs)
    slow = sum(seen)
    for h in hooks:
        h.remove()
    L = m.n_layers
    assert fast == B * L * (L + 1) // 2
    assert slow == B * L * (L + 1)


def test_relative_deviation_formula():
    v = torch.tensor([[[3.0, 4.0], [1.0, 1.0]]])          # [1, 2, 2]
    va = torch.tensor([[[0.0, 4.0], [9.0, 9.0]]])
    mask = torch.tensor([[True, False]])                   # second frame is padding
    out = relative_deviation(v, va, mask, eps=0.0)
    assert out.shape == (1, 1) and abs(float(out) - 3.0 / 5.0) < 1e-7
    with pytest.raises(ValueError, match="stacked"):
        relative_deviation(v, torch.zeros(1, 3, 2), mask, 0.0)


def test_returned_hidden_states_are_the_clean_forward():
    m = make_model()
    inputs = make_inputs()
    scores, hidden = foga_per_sample(m, *inputs, return_hidden=True)
    m.eval()
    with torch.no_grad():
        _, ref = m(*inputs, return_hidden=True)
    assert len(hidden) == m.n_layers + 1 and all(torch.equal(a, b) for a, b in zip(hidden, ref))
    assert torch.equal(scores, foga_per_sample(m, *inputs))


def test_train_mode_foga_draws_its_own_masks_per_pass_and_is_seeded():
    """probe.foga_mode train (the authors'): with dropout every pass has its own masks, so
    train-mode scores differ from eval mode's; the same seed gives the same scores, another
    seed others, and the caller's RNG and the model's mode are left as they were."""
    m = make_model().eval()
    inputs = make_inputs()
    exact = foga_per_sample(m, *inputs)
    state = torch.random.get_rng_state()
    a = foga_per_sample(m, *inputs, mode="train", seed=5)
    assert torch.equal(torch.random.get_rng_state(), state) and not m.training
    assert torch.equal(a, foga_per_sample(m, *inputs, mode="train", seed=5))
    assert not torch.equal(a, foga_per_sample(m, *inputs, mode="train", seed=6))
    assert a.shape == exact.shape and not torch.allclose(a, exact, atol=1e-3)
    scores, hidden = foga_per_sample(m, *inputs, mode="train", seed=5, return_hidden=True)
    assert torch.equal(scores, a)
    _, clean = m.eval()(*inputs, return_hidden=True)
    assert all(torch.allclose(x, y) for x, y in zip(hidden, clean))    # LASP reads eval-mode states
    with pytest.raises(ValueError, match="foga_mode"):
        foga_per_sample(m, *inputs, mode="training")


def test_train_mode_without_dropout_is_the_exact_shared_path():
    m = make_model()
    for mod in m.modules():
        if isinstance(mod, nn.Dropout):
            mod.p = 0.0
        elif isinstance(getattr(mod, "dropout", None), float):
            mod.dropout = 0.0
    inputs = make_inputs()
    assert torch.equal(foga_per_sample(m, *inputs, mode="train", seed=5), foga_per_sample(m, *inputs))
