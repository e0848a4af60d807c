"""LASP (one shared frozen head for all layers), gradient norm, and the probe sweep."""
import math

import pandas as pd
import pytest
import torch
from torch import nn

from agrepa.training.objectives import BiTCHeads, flow_matching_loss, pool
from agrepa.probing.foga import foga
from agrepa.probing.probes import bitc_scorer, fixed_noise, gradnorm, lasp, run_probes
from agrepa.probing.records import CSV_COLUMNS, read_probes
from test_foga import make_inputs, make_model

TEACHER_DIMS = {"semantic": 6, "acoustic": 5}


def make_heads(dim=32, seed=3):
    torch.manual_seed(seed)
    return BiTCHeads(dim, TEACHER_DIMS)


def make_batch(domain: int, B=4, seed=1):
    x_t, t, tokens, prompt, mask = make_inputs(B=B, seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    prompt_mask = torch.arange(x_t.shape[1])[None] < 4
    return {"mel": x_t, "mask": mask, "tokens": tokens, "prompt": prompt,
            "prompt_mask": prompt_mask.expand(B, -1) & mask, "domain": torch.full((B,), domain),
            "emb_semantic": torch.randn(B, 6, generator=g), "emb_acoustic": torch.randn(B, 5, generator=g),
            "ids": [f"c{domain}_{i}" for i in range(B)]}


def test_lasp_scores_every_hidden_state_with_the_shared_head():
    m, heads = make_model(), make_heads()
    x_t, t, tokens, prompt, mask = make_inputs()
    target = torch.randn(x_t.shape[0], 6)
    s = lasp(m, x_t, t, tokens, prompt, mask, bitc_scorer(heads, "speech", target))
    assert s.shape == (m.n_layers + 1,)
    m.eval()
    with torch.no_grad():
        _, hidden = m(x_t, t, tokens, prompt, mask, return_hidden=True)
        hidden[0] = m.embed_tokens(tokens, mask, x_t.shape[1])   # layer 0: the token embedding BiT-C trains on
        head = heads.heads["semantic"]
        expect = torch.stack([torch.cosine_similarity(head(pool(h, mask)), target, dim=-1).mean() for h in hidden])
    assert torch.allclose(s, expect, atol=1e-6)
    x_other = torch.randn_like(x_t)                                # layer 0 ignores x_t and the prompt
    s2 = lasp(m, x_other, t, tokens, torch.zeros_like(prompt), mask, bitc_scorer(heads, "speech", target))
    assert torch.equal(s2[0], s[0]) and not torch.equal(s2[1:], s[1:])


def test_changing_layer_l_changes_only_scores_from_l_on():
    m, heads = make_model(), make_heads()
    x_t, t, tokens, prompt, mask = make_inputs()
    score = bitc_scorer(heads, "audio", torch.randn(x_t.shape[0], 5))
    before = lasp(m, x_t, t, tokens, prompt, mask, score)
    l = 3
    with torch.no_grad():
        for p in m.blocks[l - 1].parameters():
            p.add_(0.3 * torch.randn_like(p))
    after = lasp(m, x_t, t, tokens, prompt, mask, score)
    assert torch.equal(before[:l], after[:l])                      # h_0 .. h_{l-1} untouched
    assert bool(((before[l:] - after[l:]).abs() > 1e-6).all())     # h_l .. h_L all move


def test_identical_states_score_identically_so_the_head_is_shared():
    """Zero block l's update: h_l == h_{l-1}, and with ONE head their LASP scores are equal."""
    m, heads = make_model(), make_heads()
    l = 2
    nn.init.zeros_(m.blocks[l - 1].ada[1].weight)
    nn.init.zeros_(m.blocks[l - 1].ada[1].bias)
    x_t, t, tokens, prompt, mask = make_inputs()
    s = lasp(m, x_t, t, tokens, prompt, mask, bitc_scorer(heads, "speech", torch.randn(x_t.shape[0], 6)))
    assert float(s[l]) == float(s[l - 1])
    assert float(s[l + 1]) != float(s[l])


def test_gradnorm_is_the_norm_of_the_fm_gradient_per_block():
    m = make_model(n_layers=3)
    batch = make_batch(0)
    x0 = torch.randn(batch["mel"].shape, generator=torch.Generator().manual_seed(7))
    grid = [0.2, 0.7]
    m.zero_grad()
    g = gradnorm(m, batch, x0, grid)
    assert g.shape == (3,) and bool((g > 0).all())
    assert all(p.grad is None for p in m.parameters())              # left untouched
    # reference: backward of the mean loss, eval mode
    m.eval()
    loss = sum(flow_matching_loss(m, batch, torch.full((4,), t), x0).loss for t in grid) / len(grid)
    loss.backward()
    ref = torch.stack([torch.sqrt(sum(p.grad.pow(2).sum() for p in b.parameters())) for b in m.blocks])
    assert torch.allclose(g, ref, rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="t grid"):
        gradnorm(m, batch, x0, [])


def test_run_probes_tidy_csv_deterministic(tmp_path):
    m, heads = make_model(n_layers=3), make_heads()
    batches = {"speech": [make_batch(0, seed=1), make_batch(0, seed=2)], "audio": [make_batch(1, seed=3)]}
    scorers = {"speech": lambda b: bitc_scorer(heads, "speech", b["emb_semantic"]),
               "audio": lambda b: bitc_scorer(heads, "audio", b["emb_acoustic"])}
    grid = [0.25, 0.75]
    kw = dict(noise_seed=5, scorers=scorers, config_name="A", seed=2)
    df = run_probes(m, batches, grid, **kw)
    assert list(df.columns) == CSV_COLUMNS
    L = m.n_layers
    for domain in ("speech", "audio"):
        d = df[df["domain"] == domain]
        assert sorted(d[d.probe == "foga"].layer.unique()) == list(range(1, L + 1))
        assert sorted(d[d.probe == "lasp"].layer.unique()) == list(range(0, L + 1))
        assert sorted(d[d.probe == "foga"].t.unique()) == grid
        gn = d[d.probe == "gradnorm"]
        assert len(gn) == L and gn.t.isna().all()
    assert len(df) == 2 * (len(grid) * (L + L + 1) + L)
    assert (df.config == "A").all() and (df.seed == 2).all()
    sp = df[df.domain == "speech"]
    assert sp["spread"].notna().all() and (sp["n"] == 8).all()      # 2 batches of 4
    assert df[df.domain == "audio"]["spread"].isna().all()          # 1 batch: no spread
    # score/spread are the mean/std over batches of the per-batch FoG-A at fixed noise
    per = []
    for i, b in enumerate(batches["speech"]):
        x0 = fixed_noise(b["mel"], 5, 0, i) * b["mask"][..., None]
        tt = torch.full((4,), 0.25)
        per.append(foga(m, (1 - tt[:, None, None]) * x0 + tt[:, None, None] * b["mel"], tt, b["tokens"],
                        b["prompt"], b["mask"]))
    per = torch.stack(per).double()
    row = sp[(sp.probe == "foga") & (sp.t == 0.25)].sort_values("layer")
    assert torch.allclose(torch.tensor(row.score.to_numpy()), per.mean(0), atol=1e-6)
    assert torch.allclose(torch.tensor(row.spread.to_numpy()), per.std(0), atol=1e-6)
    # determinism and the CSV round trip
    again = run_probes(m, batches, grid, **kw)
    pd.testing.assert_frame_equal(df, again)
    from agrepa import io
    io.write_csv(tmp_path / "p.csv", df)
    back = read_probes(tmp_path / "p.csv")
    assert len(back) == len(df) and math.isclose(back.score.sum(), df.score.sum(), rel_tol=1e-9)


def test_run_probes_rejects_unknown_probe_and_missing_heads():
    m = make_model(n_layers=2)
    with pytest.raises(ValueError, match="unknown probe"):
        run_probes(m, {"speech": [make_batch(0)]}, [0.5], noise_seed=0, probes=["fog"])
    with pytest.raises(ValueError, match="lasp"):
        run_probes(m, {"speech": [make_batch(0)]}, [0.5], noise_seed=0, probes=["lasp"])


def test_read_probes_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        read_probes(tmp_path / "nope.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("config,seed,domain,probe,layer,t,score\nA,0,speech,foga,1,0.5,0.1\n")
    with pytest.raises(ValueError, match="bad.csv.*spread"):
        read_probes(bad)


def test_lasp_alone_equals_lasp_alongside_foga():
    m, heads = make_model(n_layers=3), make_heads()
    batches = {"speech": [make_batch(0, seed=1)]}
    scorers = {"speech": lambda b: bitc_scorer(heads, "speech", b["emb_semantic"])}
    both = run_probes(m, batches, [0.4], noise_seed=1, scorers=scorers, probes=["foga", "lasp"])
    alone = run_probes(m, batches, [0.4], noise_seed=1, scorers=scorers, probes=["lasp"])
    a = both[both.probe == "lasp"].reset_index(drop=True)
    pd.testing.assert_frame_equal(a, alone.reset_index(drop=True), atol=1e-6)


def test_run_probes_train_mode_foga_is_reproducible_and_differs_from_eval():
    """probe.foga_mode train: each (domain, batch, t) draws its own seeded masks, so the
    sweep repeats exactly, differs from eval mode with dropout, and LASP stays eval-mode."""
    m, heads = make_model(n_layers=3), make_heads()      # dropout 0.1
    batches = {"speech": [make_batch(0, seed=1), make_batch(0, seed=2)]}
    scorers = {"speech": lambda b: bitc_scorer(heads, "speech", b["emb_semantic"])}
    kw = dict(noise_seed=1, scorers=scorers, probes=["foga", "lasp"])
    train_a = run_probes(m, batches, [0.3, 0.7], foga_mode="train", **kw)
    pd.testing.assert_frame_equal(train_a, run_probes(m, batches, [0.3, 0.7], foga_mode="train", **kw))
    evald = run_probes(m, batches, [0.3, 0.7], foga_mode="eval", **kw)
    f_train, f_eval = (d[d.probe == "foga"].score.to_numpy() for d in (train_a, evald))
    assert not torch.allclose(torch.tensor(f_train), torch.tensor(f_eval), atol=1e-4)
    pd.testing.assert_frame_equal(train_a[train_a.probe == "lasp"], evald[evald.probe == "lasp"])
