"""Flow-matching loss, pooling, BiT-C heads and REPA heads against hand-written formulas."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from agrepa.training.objectives import (BiTCHeads, REPAHeads, flow_matching_loss, method_plan, ot_path, pool,
                                       read_selection)
from agrepa.model.dit import DiT

DIMS = {"semantic": 6, "acoustic": 5}


def _batch(B=4, T=12, M=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    mel = torch.randn(B, T, M, generator=g)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 9:] = False
    mask[3, 5:] = False
    mel = mel * mask[..., None]
    pm = torch.zeros(B, T, dtype=torch.bool)
    pm[:, :3] = True
    return {"mel": mel, "mask": mask, "tokens": torch.randint(1, 20, (B, 4), generator=g),
            "prompt": mel * pm[..., None], "prompt_mask": pm, "domain": torch.tensor([0, 1, 0, 1]),
            "emb_semantic": torch.randn(B, 6, generator=g), "emb_acoustic": torch.randn(B, 5, generator=g)}


def _model():
    torch.manual_seed(0)
    m = DiT(n_layers=3, dim=16, n_heads=2, n_mels=8, vocab_size=20, ff_mult=2).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def test_ot_path_endpoints():
    x0, x1 = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    xt, u = ot_path(x0, x1, torch.tensor([0.0, 1.0]))
    assert torch.equal(xt[0], x0[0]) and torch.equal(xt[1], x1[1]) and torch.equal(u, x1 - x0)


@pytest.mark.parametrize("on_prompt", [True, False])
def test_flow_matching_loss_formula(on_prompt):
    m, b = _model(), _batch()
    t = torch.tensor([0.1, 0.5, 0.7, 0.95])
    x0 = torch.randn_like(b["mel"])
    out = flow_matching_loss(m, b, t, x0, loss_on_prompt=on_prompt, return_hidden=True)
    xt = (1 - t)[:, None, None] * x0 + t[:, None, None] * b["mel"]
    v = m(xt, t, b["tokens"], b["prompt"], mask=b["mask"])
    w = b["mask"] & (True if on_prompt else ~b["prompt_mask"])
    per = [((v[i] - (b["mel"][i] - x0[i])) ** 2)[w[i]].mean() for i in range(4)]
    assert torch.allclose(out.loss, torch.stack(per).mean(), atol=1e-6)
    assert len(out.hidden) == 4 and torch.allclose(out.velocity, v, atol=1e-6)
    # per-sample normalisation: the mean of shard losses is the global loss (multi-process training)
    halves = [flow_matching_loss(m, {k: x[s] for k, x in b.items()}, t[s], x0[s],
                                 loss_on_prompt=on_prompt).loss for s in (slice(0, 2), slice(2, 4))]
    assert torch.allclose((halves[0] + halves[1]) / 2, out.loss, atol=1e-6)


class _FixedVelocity(torch.nn.Module):
    """Returns a given velocity field whatever the input (isolates the loss masking)."""

    def __init__(self, v):
        super().__init__()
        self.v = v

    def forward(self, x_t, t, tokens, prompt, mask=None, return_hidden=False, **_):
        return (self.v, [x_t]) if return_hidden else self.v


def test_prompt_region_excluded_when_asked():
    b = _batch()
    t, x0 = torch.full((4,), 0.5), torch.randn_like(b["mel"])
    v = torch.randn_like(b["mel"])
    v2 = v.clone()
    v2[:, :3] += 5.0                       # a different prediction inside the prompt region only
    excl = [flow_matching_loss(_FixedVelocity(x), b, t, x0, loss_on_prompt=False).loss for x in (v, v2)]
    incl = [flow_matching_loss(_FixedVelocity(x), b, t, x0, loss_on_prompt=True).loss for x in (v, v2)]
    assert torch.equal(excl[0], excl[1])
    assert incl[1] > incl[0] + 1.0
    v3 = v.clone()
    v3[1, 9:] = 1e3                         # padding never counts
    assert torch.equal(flow_matching_loss(_FixedVelocity(v3), b, t, x0).loss,
                       flow_matching_loss(_FixedVelocity(v), b, t, x0).loss)


def test_pool_ignores_padding():
    h = torch.randn(2, 6, 3)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1] * 6], dtype=torch.bool)
    p = pool(h, mask)
    assert torch.allclose(p[0], h[0, :3].mean(0)) and torch.allclose(p[1], h[1].mean(0))
    h2 = h.clone()
    h2[0, 3:] = 1e6
    assert torch.equal(pool(h2, mask), p)


def test_bitc_heads_cosine_and_loss():
    torch.manual_seed(0)
    heads = BiTCHeads(16, DIMS, {"speech": 2.0, "audio": 0.5})
    b = _batch()
    h = torch.randn(4, 12, 16)
    pooled = pool(h, b["mask"])
    want_sem = F.cosine_similarity(heads.heads["semantic"][1](F.layer_norm(pooled, (16,))), b["emb_semantic"])
    got = heads.cosine(h, b["mask"], "speech", b["emb_semantic"])
    assert got.shape == (4,) and torch.allclose(got, want_sem, atol=1e-5)
    want_ac = F.cosine_similarity(heads.heads["acoustic"](pooled), b["emb_acoustic"])
    assert torch.allclose(heads.cosine(h, b["mask"], "audio", b["emb_acoustic"]), want_ac, atol=1e-5)
    # the loss uses each sample's own domain teacher, weighted per domain
    w = torch.tensor([2.0, 0.5, 2.0, 0.5])
    cos = torch.where(b["domain"] == 0, want_sem, want_ac)
    assert torch.allclose(heads.loss(h, b), (w * (1 - cos)).mean(), atol=1e-5)
    # CFG-dropped samples carry no loss
    keep = torch.tensor([True, False, True, True])
    assert torch.allclose(heads.loss(h, b, keep=keep), (keep * w * (1 - cos)).mean(), atol=1e-5)
    with pytest.raises(ValueError, match="model.token_dim"):
        heads.cosine(torch.randn(4, 12, 8), b["mask"], "speech", b["emb_semantic"])
    with pytest.raises(ValueError, match="domain"):
        heads.cosine(h, b["mask"], "music", b["emb_semantic"])
    with pytest.raises(KeyError, match="bitc_weight"):
        BiTCHeads(16, DIMS, {"speach": 1.0})


def test_repa_heads_baseline_absent_and_weighted():
    none = REPAHeads({}, 16, DIMS, hidden=8)
    assert len(list(none.parameters())) == 0 and not none.active
    hidden = [torch.randn(4, 12, 16) for _ in range(4)]
    b = _batch()
    assert none.loss(hidden, b) is None
    torch.manual_seed(1)
    plan = {"speech": [(1, 0.25), (3, 0.75)], "audio": [(3, 1.0)]}
    heads = REPAHeads(plan, 16, DIMS, hidden=8)
    assert set(heads.heads) == {"1", "3"} and set(heads.heads["1"]) == {"semantic"}   # no audio head at layer 1
    assert set(heads.heads["3"]) == {"semantic", "acoustic"} and heads.layers == [1, 3]
    per = heads.per_sample(hidden, b)
    for i in range(4):
        teacher, target = ("semantic", b["emb_semantic"]) if b["domain"][i] == 0 else ("acoustic", b["emb_acoustic"])
        want = 0.0
        for l, alpha in plan["speech" if b["domain"][i] == 0 else "audio"]:
            z = F.normalize(pool(hidden[l][i:i + 1], b["mask"][i:i + 1]), dim=-1)
            want += alpha * (1 - F.cosine_similarity(heads.heads[str(l)][teacher](z), target[i:i + 1]))
        assert torch.allclose(per[i], want, atol=1e-5)
    assert torch.allclose(heads.loss(hidden, b), per.mean())
    with pytest.raises(ValueError, match="layer 5"):
        REPAHeads({"speech": [(5, 1.0)]}, 16, DIMS).loss(hidden, b)
    with pytest.raises(ValueError, match="repeated layer"):
        REPAHeads({"audio": [(2, 0.5), (2, 0.5)]}, 16, DIMS)


def test_method_plan(tmp_path):
    cfg = {"train": {"repa_lambda": 0.5, "repa_weighting": "total"},
           "methods": {"baseline": {"layers": []}, "repa_l2": {"layers": [2, 3]}, "ag": {"selection": "foga"}}}
    both = lambda pairs: {"speech": pairs, "audio": pairs}
    assert method_plan(cfg, "baseline", None, 4) == both([])
    assert method_plan(cfg, "repa_l2", None, 4) == both([(2, 0.25), (3, 0.25)])      # lambda split uniformly
    sel = tmp_path / "sel.json"
    sel.write_text(json.dumps({"strategy": "foga", "mode": "per_domain",
                               "sets": {"speech": {"layers": [1, 3], "weights": [0.75, 0.25]},
                                        "audio": {"layers": [4], "weights": [1.0]},
                                        "merged": {"layers": [1], "weights": [1.0]}}}))
    assert method_plan(cfg, "ag", sel, 4) == {"speech": [(1, 0.375), (3, 0.125)], "audio": [(4, 0.5)]}
    literal = {**cfg, "train": {"repa_lambda": 0.5, "repa_weighting": "literal"}}
    assert method_plan(literal, "repa_l2", None, 4) == both([(2, 0.5), (3, 0.5)])       # REPA's per-layer lambda
    assert method_plan(literal, "ag", sel, 4) == {"speech": [(1, 0.75), (3, 0.25)], "audio": [(4, 1.0)]}
    merged = json.loads(sel.read_text())
    sel.write_text(json.dumps(dict(merged, mode="merged")))
    assert method_plan(cfg, "ag", sel, 4) == both([(1, 0.5)])
    with pytest.raises(ValueError, match="--selection"):
        method_plan(cfg, "ag", None, 4)
    with pytest.raises(KeyError, match="nope"):
        method_plan(cfg, "nope", None, 4)
    with pytest.raises(ValueError, match="outside"):
        method_plan(cfg, "repa_l2", None, 2)
    sel.write_text(json.dumps(dict(merged, sets={**merged["sets"], "speech": {"layers": [1, 3], "weights": [0.7, 0.7]}})))
    with pytest.raises(ValueError, match="sum to 1"):
        read_selection(sel, 4)


def test_bitc_head_is_the_authors_by_default_and_affine_on_request():
    """Default: LayerNorm without affine and a bias-free orthogonal Linear (the authors'
    REPA_single_codebook/models.py); affine=True: LN scale/shift and a bias."""
    torch.manual_seed(0)
    heads = BiTCHeads(16, DIMS)
    for t, d in DIMS.items():
        ln, lin = heads.heads[t]
        assert ln.weight is None and ln.bias is None and lin.bias is None and lin.weight.shape == (d, 16)
        w = lin.weight.detach()                       # orthogonal rows: W W^T = I
        assert torch.allclose(w @ w.T, torch.eye(d), atol=1e-5)
    assert sorted(heads.state_dict()) == ["heads.acoustic.1.weight", "heads.semantic.1.weight"]
    assert not BiTCHeads.affine_of(heads.state_dict())
    affine = BiTCHeads(16, DIMS, affine=True)
    ln, lin = affine.heads["semantic"]
    assert ln.weight is not None and lin.bias is not None and BiTCHeads.affine_of(affine.state_dict())
    # the head is exactly W LN(pool(h)) with the unit-less LayerNorm
    b, h = _batch(), torch.randn(4, 12, 16)
    want = F.cosine_similarity(F.layer_norm(pool(h, b["mask"]), (16,)) @ heads.heads["semantic"][1].weight.T,
                               b["emb_semantic"])
    assert torch.allclose(heads.cosine(h, b["mask"], "speech", b["emb_semantic"]), want, atol=1e-5)


def test_bitc_objective_full_heads_none():
    """full: gradients reach the heads and the token embedding; heads: the heads only, with
    the same loss value; none: no term."""
    b = _batch()
    heads = BiTCHeads(16, DIMS)
    grads = {}
    for objective in ("full", "heads", "none"):
        tok = torch.randn(4, 12, 16, generator=torch.Generator().manual_seed(3), requires_grad=True)
        heads.zero_grad(set_to_none=True)
        loss = heads.loss(tok, b, objective=objective)
        if objective == "none":
            assert float(loss) == 0.0 and not loss.requires_grad
            continue
        loss.backward()
        grads[objective] = (float(loss.detach()), tok.grad, heads.heads["semantic"][1].weight.grad.clone())
    assert grads["full"][0] == pytest.approx(grads["heads"][0])
    assert grads["full"][1] is not None and float(grads["full"][1].abs().sum()) > 0
    assert grads["heads"][1] is None                                    # the token embedding untouched
    assert torch.allclose(grads["full"][2], grads["heads"][2])          # the heads learn as before
    with pytest.raises(ValueError, match="bitc_objective"):
        heads.loss(tok, b, objective="partial")


def test_heads_select_rows_from_the_host_without_reading_the_device(monkeypatch):
    """With collate's host-side ``domain_rows`` the BiT-C and REPA terms never read a device tensor
    back to the host (no ``nonzero`` / ``bool`` of a tensor: a sync on a GPU), and give bitwise the
    loss and gradients of the row selection from the ``domain`` tensor."""
    torch.manual_seed(0)
    bitc = BiTCHeads(16, DIMS, {"speech": 2.0, "audio": 0.5})
    repa = REPAHeads({"speech": [(1, 0.25), (3, 0.75)], "audio": [(3, 1.0)]}, 16, DIMS, hidden=8)
    b = _batch()
    b["domain"] = torch.tensor([0, 1, 1, 1])
    h = torch.randn(4, 12, 16, requires_grad=True)
    hidden = [torch.randn(4, 12, 16, requires_grad=True) for _ in range(4)]

    def run(batch):
        for t in [h, *hidden, *bitc.parameters(), *repa.parameters()]:
            t.grad = None
        loss = bitc.loss(h, batch) + repa.loss(hidden, batch)
        loss.backward()
        return loss.detach(), [t.grad.clone() for t in [h, hidden[1], hidden[3], *bitc.parameters(), *repa.parameters()]]

    want, want_grads = run(b)
    host = {**b, "domain_rows": ((0,), (1, 2, 3))}

    def no_read(*args, **kwargs):
        raise AssertionError("a device tensor was read on the host")

    monkeypatch.setattr(torch.Tensor, "nonzero", no_read)
    monkeypatch.setattr(torch.Tensor, "__bool__", no_read)
    got, got_grads = run(host)
    monkeypatch.undo()
    assert torch.equal(got, want) and all(torch.equal(g, w) for g, w in zip(got_grads, want_grads))
    with pytest.raises(AssertionError, match="read on the host"):   # the fallback does read it
        monkeypatch.setattr(torch.Tensor, "nonzero", no_read)
        bitc.loss(h, b)
