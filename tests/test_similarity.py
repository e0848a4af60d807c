"""Representation-similarity regularisation (seed 003): the formula, pooling over real
positions only, where the gradient goes, the settings, the codebook text side, the
batch-level CFG coin and its use in Phase II branches."""
from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from hypothesis import given, settings, strategies as st

from agrepa import config as config_mod
from agrepa.io import write_json
from agrepa.model.dit import DiT
from agrepa.tokenizers.kmeans import KMeans
from agrepa.training import distributed as dist_mod
from agrepa.training import similarity as rr
from agrepa.training import train
from test_dataset import data_paths, make_corpus, tiny_cfg

torch.set_num_threads(1)


def _orthogonal(d: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q.float()


def _all_pairs(b: int) -> torch.Tensor:
    return rr.pair_mask(torch.ones(b, dtype=torch.bool), torch.zeros(b, dtype=torch.long), False)


@settings(max_examples=40, deadline=None)
@given(b=st.integers(2, 9), d=st.integers(2, 12), seed=st.integers(0, 10 ** 6))
def test_zero_for_the_same_similarities_positive_otherwise(b, d, seed):
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(b, d, generator=g)
    pairs = _all_pairs(b)
    assert rr.similarity_loss(text, text, pairs) == 0
    # the same similarity structure in another space: rotated, rescaled per sample, wider
    scale = torch.rand(b, 1, generator=g) * 5 + 0.1
    same = torch.cat([text @ _orthogonal(d, seed) * scale, torch.zeros(b, 3)], dim=1)
    assert float(rr.similarity_loss(text, same, pairs)) < 1e-10
    other = torch.randn(b, d, generator=g)
    loss = float(rr.similarity_loss(text, other, pairs))
    s_t, s_a = rr.cosine_matrix(text), rr.cosine_matrix(other)
    expected = sum(float(s_t[i, j] - s_a[i, j]) ** 2 for i in range(b) for j in range(b) if i != j) / (b * (b - 1))
    assert loss == pytest.approx(expected, rel=1e-5, abs=1e-9) and loss > 0
    assert loss == pytest.approx(float(rr.similarity_loss(other, text, pairs)), rel=1e-5)   # symmetric


def test_pairs_eligible_and_within_domain():
    eligible = torch.tensor([True, True, False, True])
    domain = torch.tensor([0, 1, 0, 1])
    assert rr.pair_mask(eligible, domain, False).sum() == 3 * 2
    within = rr.pair_mask(eligible, domain, True)
    assert within.nonzero().tolist() == [[1, 3], [3, 1]]
    text, audio = torch.randn(4, 5), torch.randn(4, 5, requires_grad=True)
    none = rr.similarity_loss(text, audio, torch.zeros(4, 4, dtype=torch.bool))
    assert none == 0 and none.requires_grad                      # no pair: adds nothing, keeps the graph
    # only the chosen pairs count: changing a sample outside them changes nothing
    a2 = audio.detach().clone()
    a2[0] = torch.randn(5) * 100
    assert torch.equal(rr.similarity_loss(text, audio, within), rr.similarity_loss(text, a2, within))


@pytest.mark.parametrize("how", ["max", "mean"])
def test_pooling_ignores_padded_positions(how):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 7, 4, generator=g) - 3.0            # all negative-ish: a 0 or a pad would win a max
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5]).bool()
    ref = torch.stack([x[i, mask[i]].amax(0) if how == "max" else x[i, mask[i]].mean(0) for i in range(3)])
    for pad in (1e6, -1e6, 0.0, math.inf):
        padded = torch.where(mask[..., None], x, torch.full_like(x, pad))
        assert torch.equal(rr.masked_pool(padded, mask, how), rr.masked_pool(x, mask, how))
        assert torch.allclose(rr.masked_pool(padded, mask, how), ref)
    assert torch.equal(rr.masked_pool(x, torch.zeros(3, 7, dtype=torch.bool), how), torch.zeros(3, 4))


def _settings(**kw) -> rr.RRSettings:
    base = dict(lam=3.0, pool="max", layer=2, when="cfg", text="warmup", within_domain=False)
    return rr.RRSettings(**{**base, **kw})


def _batch(model: DiT, B: int = 4, T: int = 20, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    lengths, n_tok = [20, 14, 9, 17][:B], [6, 4, 2, 5][:B]
    mask = torch.arange(T)[None] < torch.tensor(lengths)[:, None]
    tokens = torch.zeros(B, 6, dtype=torch.long)
    for i, n in enumerate(n_tok):
        tokens[i, :n] = torch.randint(1, model.vocab_size, (n,), generator=g)
    mel = torch.randn(B, T, model.n_mels, generator=g) * mask[..., None]
    return {"mel": mel, "mask": mask, "tokens": tokens, "prompt": torch.zeros_like(mel),
            "domain": torch.tensor([0, 1, 0, 1][:B])}


def _forward(model, batch, drop):
    t = torch.full((batch["mel"].shape[0],), 0.5)
    return model(batch["mel"], t, batch["tokens"], batch["prompt"], mask=batch["mask"], return_hidden=True,
                 drop_tokens=drop, drop_prompt=drop)


def test_padding_with_huge_values_changes_nothing_end_to_end():
    torch.manual_seed(0)
    model = DiT(n_layers=2, dim=16, n_heads=2, n_mels=8, vocab_size=30).eval()
    batch = _batch(model)
    _, hidden = _forward(model, batch, torch.ones(4, dtype=torch.bool))
    frozen = rr.frozen_embedding(model.token_emb, model.state_dict(), "test")
    reg = rr.SimilarityRegulariser(_settings(), frozen)
    drop = torch.ones(4, dtype=torch.bool)
    ref = reg.loss(hidden, batch, drop, model.token_emb, dist_mod.Dist())
    pad = ~batch["mask"][..., None]
    huge = [torch.where(pad, torch.full_like(h, 1e6), h) for h in hidden]
    with torch.no_grad():
        frozen.table.weight[0] = 1e6                            # the PAD token's row: never pooled
    reg_pad = rr.SimilarityRegulariser(_settings(), frozen)
    assert torch.equal(reg_pad.loss(huge, batch, drop, model.token_emb, dist_mod.Dist()), ref)
    assert float(ref.detach()) > 0


@pytest.mark.parametrize("text", ["warmup", "live"])
def test_gradient_reaches_hidden_states_not_the_text_side(text):
    torch.manual_seed(0)
    model = DiT(n_layers=2, dim=16, n_heads=2, n_mels=8, vocab_size=30)
    for block in model.blocks:                                  # as after training: adaLN-Zero gates open
        torch.nn.init.normal_(block.ada[1].weight, std=0.2)
    batch = _batch(model)
    drop = torch.ones(4, dtype=torch.bool)                    # a CFG step: the model sees no token
    _, hidden = _forward(model, batch, drop)
    for h in hidden:
        h.retain_grad()
    frozen = None if text == "live" else \
        rr.frozen_embedding(model.token_emb, model.state_dict(), "test").requires_grad_(True)
    reg = rr.SimilarityRegulariser(_settings(text=text), frozen)
    assert not reg.text_side(batch["tokens"], model.token_emb).requires_grad
    reg.loss(hidden, batch, drop, model.token_emb, dist_mod.Dist()).backward()
    assert hidden[2].grad.abs().sum() > 0 and hidden[1].grad.abs().sum() > 0          # the aligned layer and below
    assert model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0 and model.input_proj.weight.grad.abs().sum() > 0
    assert model.blocks[1].mlp[0].weight.grad.abs().sum() > 0
    # the text side is a constant: neither the live table nor a frozen copy gets a gradient
    for p in model.token_emb.parameters():
        assert p.grad is None or p.grad.abs().sum() == 0
    assert frozen is None or all(p.grad is None for p in frozen.parameters())


def test_text_side_of_config_b_pairs_and_the_normalised_conditioning():
    torch.manual_seed(0)
    vocab, off = 30, 16                                         # ids 1..15 speech, 16..29 audio
    model = DiT(n_layers=2, dim=16, n_heads=2, n_mels=8, vocab_size=vocab, paired_tokens=True, audio_offset=off)
    tokens = torch.tensor([[[3, 20], [5, 21], [0, 0]], [[17, 25], [0, 0], [0, 0]]])   # [B, N, 2], PAD rows
    x, real = rr.conditioning_features(tokens, model.token_emb)
    assert x.shape == (2, 3, 16) and real.tolist() == [[True, True, False], [True, False, False]]
    assert torch.allclose(x, model.token_emb.embed(tokens))     # the fused (primary, BEATs) pair per position
    book = torch.randn(vocab, 6)
    xb, _ = rr.conditioning_features(tokens, book)
    assert torch.allclose(xb[0, 1], book[5] + book[21])         # codebook: the pair's two rows (own blocks) summed
    norm = DiT(n_layers=2, dim=16, n_heads=2, n_mels=8, vocab_size=vocab, token_l2_normalize=True)
    xn, _ = rr.conditioning_features(tokens[..., 0], norm.token_emb)
    assert torch.allclose(xn[real].norm(dim=-1), torch.ones(3))    # as the model normalises its conditioning
    reg = rr.SimilarityRegulariser(_settings(), rr.frozen_embedding(model.token_emb, model.state_dict(), "t"))
    pooled = reg.text_side(tokens, model.token_emb)
    assert torch.allclose(pooled[1], x[1, 0]) and torch.allclose(pooled[0], x[0, :2].amax(0))


def test_settings_merge_the_method_over_the_section(tmp_path):
    cfg, _ = tiny_cfg(tmp_path, {"methods": {"m": {"layers": [], "rr": {"pool": "mean", "layer": 1}},
                                            "off": {"layers": []}}})
    s = rr.method_settings(cfg, "m", n_layers=2)
    assert s == rr.RRSettings(3.0, "mean", 1, "cfg", "warmup", False)
    assert rr.method_settings(cfg, "off", 2) is None
    last = config_mod.deep_merge(cfg, {"methods": {"m": {"rr": {"layer": None}}}})
    assert rr.method_settings(last, "m", 2).layer == 2                                  # null: h_L
    bad = config_mod.deep_merge(cfg, {"methods": {"m": {"rr": {"layer": 3}}}})
    with pytest.raises(ValueError, match=r"methods.m.rr / rr: layer 3 outside 1..2"):
        rr.method_settings(bad, "m", 2)
    book = config_mod.deep_merge(cfg, {"methods": {"m": {"rr": {"text": "codebook"}}}})
    with pytest.raises(ValueError, match="within_domain: true"):
        rr.method_settings(book, "m", 2)


def test_codebook_table_places_each_stream_in_its_own_block(tmp_path):
    meta = {"vocab_size": 1 + 3 + 2, "offsets": {"speech": 1, "audio": 4}, "tokenizers": {}}
    books = {"speech": torch.randn(3, 4, dtype=torch.float64), "audio": torch.randn(2, 2, dtype=torch.float64)}
    for stream, c in books.items():
        d = tmp_path / stream
        KMeans(c).save(d)
        write_json(d / "config.json", {"kind": "kmeans", "stream": stream, "k": c.shape[0], "frame_rate": 50.0,
                                          "granularity": 1})
        meta["tokenizers"][stream] = {"dir": str(d), "kind": "kmeans"}
    table = rr.codebook_table(meta, "store")
    assert table.shape == (6, 6) and table[0].abs().sum() == 0
    assert torch.allclose(table[1:4, :4], books["speech"].float()) and table[1:4, 4:].abs().sum() == 0
    assert torch.allclose(table[4:6, 4:], books["audio"].float()) and table[4:6, :4].abs().sum() == 0
    with pytest.raises(KeyError, match="no 'tokenizers'"):
        rr.codebook_table({"vocab_size": 6, "offsets": {}}, "store")


# -- the batch-level CFG coin ----------------------------------------------------------------

def test_cfg_mode_batch_drops_every_condition_of_a_step_together(tmp_path):
    cfg, _ = tiny_cfg(tmp_path, {"train": {"cfg_drop_tokens": 0.3, "cfg_drop_prompt": 0.2}})
    batch_cfg = config_mod.deep_merge(cfg, {"train": {"cfg_mode": "batch"}})
    n, G, cfg_steps, prompt_only = 600, 6, 0, 0
    for step in range(n):
        s = train.draw_step(cfg, 0, "train", step, G)
        b = train.draw_step(batch_cfg, 0, "train", step, G)
        for key in ("crop", "prompt", "t", "x0"):                  # the same draws apart from the drops
            assert torch.equal(getattr(s, key), getattr(b, key)), key
        assert b.drop_tokens.all() or not b.drop_tokens.any()      # one decision for the whole step
        assert b.drop_prompt.all() or not b.drop_prompt.any()
        assert not b.drop_tokens.any() or b.drop_prompt.all()       # a CFG step drops the prompt too
        cfg_steps += int(b.drop_tokens[0])
        prompt_only += int(b.drop_prompt[0] and not b.drop_tokens[0])
    assert abs(cfg_steps / n - 0.3) < 0.07 and abs(prompt_only / (n - cfg_steps) - 0.2) < 0.07
    # the coin depends on (seed, stream, step) only
    assert [bool(train.draw_step(batch_cfg, 0, "train", k, G).drop_tokens[0]) for k in range(40)] == \
        [bool(train.draw_step(batch_cfg, 0, "train", k, 2).drop_tokens[0]) for k in range(40)]
    assert [bool(train.draw_step(batch_cfg, 1, "train", k, G).drop_tokens[0]) for k in range(40)] != \
        [bool(train.draw_step(batch_cfg, 0, "train", k, G).drop_tokens[0]) for k in range(40)]


@pytest.mark.parametrize("arch", ["f5", "cosyvoice"])
def test_cfg_mode_batch_on_another_backbone_follows_its_recipe(tmp_path, arch):
    # the CFG-step rate is the recipe's chance that a sample's tokens are dropped (cfg_drop_both here),
    # the prompt-only rate its cfg_drop_prompt: F5-TTS's own once-per-batch scheme
    cfg, _ = tiny_cfg(tmp_path, {"model": {"arch": arch}, "train": {"cfg_mode": "batch"}})
    r = cfg["model"][arch]
    n, cfg_steps, prompt_only = 600, 0, 0
    for step in range(n):
        b = train.draw_step(cfg, 0, "train", step, 4)
        assert (b.drop_tokens.all() or not b.drop_tokens.any()) and (b.drop_prompt.all() or not b.drop_prompt.any())
        assert not b.drop_tokens.any() or b.drop_prompt.all()
        cfg_steps += int(b.drop_tokens[0])
        prompt_only += int(b.drop_prompt[0] and not b.drop_tokens[0])
    assert r["cfg_drop_tokens"] == 0 and abs(cfg_steps / n - r["cfg_drop_both"]) < 0.07
    assert abs(prompt_only / (n - cfg_steps) - r["cfg_drop_prompt"]) < 0.07


def test_branch_rate_overrides_are_the_dit_recipes(tmp_path):
    cfg, _ = tiny_cfg(tmp_path, {"methods": {"m": {"layers": [], "train": {"cfg_mode": "batch", "cfg_drop_tokens": 0.2}},
                                            "mode": {"layers": [], "train": {"cfg_mode": "batch"}}}})
    assert train.method_config(cfg, "m")["train"]["cfg_drop_tokens"] == 0.2
    f5 = config_mod.deep_merge(cfg, {"model": {"arch": "f5"}})
    with pytest.raises(ValueError, match=r"methods.m.train: \['cfg_drop_tokens'\] are the DiT recipe's CFG rates; "
                                         r"model.arch is 'f5', whose rates are model.f5.cfg_drop_\*"):
        train.method_config(f5, "m")
    assert train.method_config(f5, "mode")["train"]["cfg_mode"] == "batch"       # the mode applies to any backbone


def test_rr_on_a_u_net_backbone_pools_its_coarser_hidden_states():
    # CosyVoice-style: the middle units run at half the frame rate; RR pools them over the subsampled mask
    from agrepa.model import frame_mask
    from test_backbones import make_inputs, make_model

    model = make_model("cosyvoice").train()
    x_t, t, tokens, prompt, mask = make_inputs()
    drop = torch.ones(4, dtype=torch.bool)
    _, hidden = model(x_t, t, tokens, prompt, mask, return_hidden=True, drop_tokens=drop, drop_prompt=drop)
    mid = next(l for l in range(1, model.n_layers + 1) if hidden[l].shape[1] < mask.shape[1])
    assert hidden[mid].shape[1] == math.ceil(mask.shape[1] / 2)
    batch = {"tokens": tokens, "mask": mask, "domain": torch.tensor([0, 1, 0, 1])}
    frozen = rr.frozen_embedding(model.token_emb, model.state_dict(), "t")
    for h in hidden:
        h.retain_grad()
    losses = {}
    for layer in (mid, model.n_layers):
        reg = rr.SimilarityRegulariser(_settings(layer=layer), frozen)
        losses[layer] = reg.loss(hidden, batch, drop, model.token_emb, dist_mod.Dist())
        losses[layer].backward(retain_graph=True)
        assert float(losses[layer].detach()) > 0 and hidden[layer].grad.abs().sum() > 0
    # the padded frames of the coarse level never enter the pool: huge values there change nothing
    sub = frame_mask(mask, hidden[mid].shape[1])
    huge = list(hidden)
    huge[mid] = torch.where(sub[..., None], hidden[mid], torch.full_like(hidden[mid], 1e6))
    reg = rr.SimilarityRegulariser(_settings(layer=mid), frozen)
    assert torch.equal(reg.loss(huge, batch, drop, model.token_emb, dist_mod.Dist()), losses[mid])


RR_METHODS = {
    "b_base": {"layers": [], "train": {"cfg_mode": "batch", "cfg_drop_tokens": 0.5}},
    "b_rr": {"layers": [], "train": {"cfg_mode": "batch", "cfg_drop_tokens": 0.5}, "rr": {"pool": "max"}},
    "b_repa_rr": {"layers": [2], "train": {"cfg_mode": "batch", "cfg_drop_tokens": 0.5}, "rr": {"pool": "mean"}},
    "b_always": {"layers": [], "train": {"cfg_mode": "batch", "cfg_drop_tokens": 0.5}, "rr": {"when": "always"}},
}


@pytest.fixture(scope="module")
def branches(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rr")
    cfg, _ = tiny_cfg(tmp, {"methods": RR_METHODS, "train": {"branch_epochs": 4.0}})
    paths = make_corpus(tmp / "data")
    warm = train.run(cfg, phase="warmup", out=tmp / "warm", seed=0, data=data_paths(paths))
    runs = {m: pd.read_csv(train.run(cfg, phase="branch", method=m, init=warm, out=tmp / m, seed=0,
                                     data=data_paths(paths)).parent / "metrics.csv") for m in RR_METHODS}
    return cfg, warm, runs


def test_every_branch_sees_the_same_drop_steps_and_rr_applies_on_them(branches):
    cfg, warm, runs = branches
    # a CFG step drops every sample's tokens, so its BiT-C term is exactly 0: the same steps in every branch
    drops = {m: (r["bitc"] == 0).tolist() for m, r in runs.items()}
    assert drops["b_base"] == drops["b_rr"] == drops["b_repa_rr"] == drops["b_always"]
    assert 0 < sum(drops["b_base"]) < len(drops["b_base"])
    lam = cfg["rr"]["lambda"]
    for m in ("b_rr", "b_repa_rr"):
        r = runs[m]
        assert (r["rr"].notna() == (r["bitc"] == 0)).all(), m         # RR on the CFG steps only
        on = r[r["rr"].notna()]
        assert (on["rr"] > 0).all()
        repa = on["repa"].fillna(0.0)
        assert ((on["loss"] - (on["fm"] + on["bitc"] + repa + lam * on["rr"])).abs() < 1e-5).all(), m
    assert runs["b_base"]["rr"].isna().all() and runs["b_always"]["rr"].notna().all()
    # identical until the first CFG step: RR is the only difference between b_base and b_rr
    first = drops["b_base"].index(True)
    assert runs["b_base"]["fm"][: first + 1].tolist() == runs["b_rr"]["fm"][: first + 1].tolist()
    assert runs["b_base"]["loss"][first] != runs["b_rr"]["loss"][first]


def test_branch_records_its_effective_cfg_settings(branches, tmp_path):
    cfg, warm, runs = branches
    ck = torch.load(warm.parent.parent / "b_rr" / "final.pt", map_location="cpu", weights_only=True)
    assert ck["config"]["train"]["cfg_mode"] == "batch" and ck["config"]["train"]["cfg_drop_tokens"] == 0.5
    assert torch.load(warm, map_location="cpu", weights_only=True)["config"]["train"]["cfg_mode"] == "sample"
    bad = config_mod.deep_merge(cfg, {"methods": {"b_rr": {"train": {"lr": 1.0}}}})
    with pytest.raises(ValueError, match=r"methods.b_rr.train: \['lr'\] cannot differ between branches"):
        train.method_config(bad, "b_rr")


def test_unconditional_pass_drops_the_prompt_for_batch_mode_runs(tmp_path):
    from agrepa.generation.sampling import guidance, run_config, run_settings, sampler_settings

    cfg, _ = tiny_cfg(tmp_path)
    assert cfg["sample"]["cfg_uncond_prompt"] == "auto" and guidance(cfg)["uncond_prompt"] == "keep"
    batch = config_mod.deep_merge(cfg, {"train": {"cfg_mode": "batch"}})        # a CFG step dropped both
    assert guidance(batch)["uncond_prompt"] == "drop"
    keep = config_mod.deep_merge(batch, {"sample": {"cfg_uncond_prompt": "keep"}})
    assert guidance(keep)["uncond_prompt"] == "keep"
    # samplers of a trained run (agrepa sample, lsac-*, convergence) follow the run's own CFG mode and
    # architecture, with this config's recipe for it
    trained = config_mod.deep_merge(batch, {"model": {"n_layers": 3}})
    resolved = run_config(cfg, trained)
    assert guidance(resolved)["uncond_prompt"] == "drop" and resolved["model"]["n_layers"] == cfg["model"]["n_layers"]
    assert guidance(run_config(batch, cfg))["uncond_prompt"] == "keep"
    assert sampler_settings(resolved)["uncond_prompt"] == "drop" == run_settings(cfg, trained)["uncond_prompt"]
    assert run_settings(cfg, cfg)["uncond_prompt"] == "keep"
    # another backbone's unconditional pass is its recipe's (model.<arch>.cfg_uncond_prompt), whatever the mode
    f5 = config_mod.deep_merge(trained, {"model": {"arch": "f5"}})
    assert run_settings(cfg, f5)["uncond_prompt"] == cfg["model"]["f5"]["cfg_uncond_prompt"] == "drop"
    assert run_settings(cfg, f5)["formula"] == "cond"
