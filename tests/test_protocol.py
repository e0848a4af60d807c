"""The paper's protocol, checked (issue 12): total alignment weight, per-domain selection,
BiT-C on the token embedding, the probed model is the branch's start, the baseline is the
warm-up continued, lengths in epochs, the probe sample."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from agrepa import config as config_mod
from agrepa.model.dit import DiT
from agrepa.probing import probes
from agrepa.probing.records import CSV_COLUMNS
from agrepa.probing.selection import select
from agrepa.training import distributed as dist_mod
from agrepa.training import train
from agrepa.training.checkpoint import EMA
from agrepa.training.dataset import TrainingData
from agrepa.training.objectives import REPAHeads, method_plan
from agrepa.training.schedule import Lengths
from test_dataset import data_paths, make_corpus, tiny_cfg
from test_train import _load, _tensors_equal
from test_workflow_support import DEFAULT_CONFIG

torch.set_num_threads(1)
PAPER_CONFIG = Path(DEFAULT_CONFIG).parent / "paper.yaml"


def synthetic_probes(n_layers: int) -> pd.DataFrame:
    """A probes table of one run: speech and audio peak at different layers."""
    rows = []
    for domain, peak in (("speech", 1), ("audio", n_layers)):
        for l in range(1, n_layers + 1):
            for probe, score in (("foga", 1.0 / (1 + abs(l - peak))), ("lasp", 0.1 * l)):
                rows.append(("A", 0, domain, probe, l, 0.5, score, 0.0, 4))
            rows.append(("A", 0, domain, "gradnorm", l, math.nan, 1.0 + (l == peak), 0.0, 4))
        rows.append(("A", 0, domain, "lasp", 0, 0.5, 0.0, 0.0, 4))
    return pd.DataFrame(rows, columns=CSV_COLUMNS)


@pytest.mark.parametrize("overlays", [[DEFAULT_CONFIG], [DEFAULT_CONFIG, PAPER_CONFIG]], ids=["default", "paper"])
@pytest.mark.parametrize("mode", ["per_domain", "merged"])
def test_total_alignment_weight_is_lambda_for_every_method(overlays, mode, tmp_path):
    cfg = config_mod.load(overlays)
    lam, L = float(cfg["train"]["repa_lambda"]), int(cfg["model"]["n_layers"])
    table3 = cfg["report"]["table3"]
    methods = list(cfg["report"]["table2"]["methods"]) + [table3["baseline"]] + list(table3["strategies"].values())
    assert len(set(methods)) >= 10
    for method in dict.fromkeys(methods):
        spec, sel = cfg["methods"][method], None
        if "selection" in spec:
            sel = tmp_path / f"{method}.json"
            sel.write_text(json.dumps(select(synthetic_probes(L), spec["selection"], int(cfg["selection"]["k"]), 0,
                                             mode=mode)))
        plan = method_plan(cfg, method, sel, L)
        for domain, pairs in plan.items():
            total = sum(alpha for _, alpha in pairs)
            assert total == (0.0 if not spec.get("selection") and not spec["layers"] else pytest.approx(lam)), \
                (method, domain, pairs)
    # the other reading stays available: lambda on every fixed layer
    literal = config_mod.deep_merge(cfg, {"train": {"repa_weighting": "literal"}})
    assert sum(a for _, a in method_plan(literal, "repa_l4_8_12", None, L)["speech"]) == pytest.approx(3 * lam)


def test_per_domain_sets_in_the_selection_json():
    rec = select(synthetic_probes(6), "foga", 2, 0)
    assert rec["mode"] == "per_domain"
    assert rec["sets"]["speech"]["layers"] == [1, 2] and rec["sets"]["audio"]["layers"] == [6, 5]
    for key in ("speech", "audio", "merged"):
        assert math.isclose(sum(rec["sets"][key]["weights"]), 1.0) and set(rec["sets"][key]["scores"]) == \
            {str(l) for l in range(1, 7)}
    lasp = select(synthetic_probes(6), "lasp", 2, 0)["sets"]       # Cos-SEM for speech, Cos-EVT for audio
    assert lasp["speech"]["scores"] == {str(l): pytest.approx(0.1 * l) for l in range(1, 7)}
    rnd = select(synthetic_probes(6), "random", 2, 3)["sets"]
    assert rnd["speech"] == select(synthetic_probes(6), "random", 2, 3)["sets"]["speech"]   # seeded per domain


def test_per_domain_gradients_come_only_from_the_domains_layers():
    """Hooks on the hidden states: a speech sample's gradient reaches exactly the speech-selected
    layers, an audio sample's exactly the audio-selected ones."""
    torch.manual_seed(0)
    dims = {"semantic": 6, "acoustic": 5}
    plan = {"speech": [(1, 0.3), (3, 0.2)], "audio": [(2, 0.4), (3, 0.1)]}
    heads = REPAHeads(plan, 16, dims, hidden=8)
    B, T = 4, 7
    hidden = [torch.randn(B, T, 16, requires_grad=True) for _ in range(5)]
    grads = {}
    for l, h in enumerate(hidden):
        h.register_hook(lambda g, l=l: grads.__setitem__(l, g.clone()))
    batch = {"domain": torch.tensor([0, 1, 0, 1]), "mask": torch.ones(B, T, dtype=torch.bool),
             "emb_semantic": torch.randn(B, 6), "emb_acoustic": torch.randn(B, 5)}
    heads.loss(hidden, batch).backward()
    for b, d in enumerate(["speech", "audio", "speech", "audio"]):
        reached = {l for l in range(5) if l in grads and grads[l][b].abs().sum() > 0}
        assert reached == {l for l, _ in plan[d]}, (b, d, reached)
    # heads exist only where a domain is aligned: no acoustic head at layer 1, no semantic head at layer 2
    assert {(l, t) for l in heads.heads for t in heads.heads[l]} == \
        {("1", "semantic"), ("3", "semantic"), ("2", "acoustic"), ("3", "acoustic")}


def _setup(cfg, paths, phase="warmup", init=None, method=None, selection=None, seed=0):
    """The branch/warm-up step-0 state exactly as ``train.run`` builds it."""
    clips = TrainingData(cfg, data_paths(paths))
    init_ck = train.read_init(Path(init), clips) if init else None
    loop = train.Loop.build(cfg, phase, seed, Path("/nonexistent"), dist_mod.Dist(), Lengths.of(cfg, clips.domain),
                            init_ck, None)
    return loop, clips, train.initial_state(loop, clips, method or "warmup", init_ck, selection)


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("protocol")
    cfg, _ = tiny_cfg(tmp, {"model": {"dropout": 0.1}, "train": {"checkpoint_every": 100}})
    paths = make_corpus(tmp / "data")
    final = train.run(cfg, phase="warmup", out=tmp / "warm", seed=0, data=data_paths(paths))
    return tmp, cfg, paths, final


def test_probed_weights_are_the_branch_start(warm):
    tmp, cfg, paths, final = warm
    probed = probes.probed_run(final)
    _, _, state = _setup(cfg, paths, "branch", final, "baseline")
    assert _tensors_equal(probed.model.state_dict(), state.model.state_dict())
    assert _tensors_equal(probed.bitc.state_dict(), state.bitc.state_dict())
    assert not _tensors_equal(probed.model.state_dict(), _load(final)["ema"]["model"])   # not the EMA


def test_baseline_branch_is_the_warmup_continued(warm):
    tmp, cfg, paths, final = warm
    n = 4
    branch = _load(train.run(cfg, phase="branch", method="baseline", init=final, out=tmp / "base", seed=0, steps=n,
                             data=data_paths(paths)))
    longer = _load(train.run(cfg, phase="warmup", out=tmp / "warm_longer", seed=0, steps=6 + n,
                             data=data_paths(paths)))
    for key in ("model", "ema", "bitc", "optimizer", "sampler", "rng"):
        assert _tensors_equal(branch[key], longer[key]), key
    assert branch["optimizer"]["param_groups"][0]["lr"] == longer["optimizer"]["param_groups"][0]["lr"]
    sb, sl = branch["scheduler"], longer["scheduler"]
    assert sb["span"] == sl["span"] == 12 and sb["start"] + sb["steps"] == sl["start"] + sl["steps"] == 6 + n
    assert branch["start_step"] == 6 and branch["step"] == n
    # restarting stays available: a fresh optimiser and schedule
    restart = config_mod.deep_merge(cfg, {"train": {"branch_start": "restart"}})
    fresh = _load(train.run(restart, phase="branch", method="baseline", init=final, out=tmp / "base_restart", seed=0,
                            steps=n, data=data_paths(paths)))
    assert fresh["scheduler"] == {"span": n, "start": 0, "steps": n} and not _tensors_equal(fresh["model"], branch["model"])


def test_bitc_reads_the_token_embedding_and_skips_dropped_samples(warm):
    tmp, cfg, paths, final = warm
    loop, clips, state = _setup(cfg, paths, "branch", final, "baseline")
    for m in state.modules():
        m.eval()
    batch = clips.collate([0, 1, 6, 7])
    draw = train.draw_step(cfg, 0, "x", 0, 4)
    draw.drop_tokens[:] = False
    _, a = train.losses(loop, state.model, state, batch, draw)
    other = train.draw_step(cfg, 0, "x", 0, 4)
    other.drop_tokens[:] = False
    other.x0.normal_()                                   # another x_t ...
    other.drop_prompt[:] = True                          # ... and no prompt
    _, b = train.losses(loop, state.model, state, batch, other)
    assert a["bitc"] == b["bitc"] and a["fm"] != b["fm"]
    draw.drop_tokens[:] = True                           # every sample CFG-dropped: no BiT-C loss at all
    _, c = train.losses(loop, state.model, state, batch, draw)
    assert a["bitc"] > 0 and c["bitc"] == 0.0
    # its gradient reaches the token embedding and the heads, not the input projection
    loss = state.bitc.loss(state.model.embed_tokens(batch["tokens"], batch["mask"], batch["mel"].shape[1]), batch)
    loss.backward()
    assert state.model.token_emb.table.weight.grad.abs().sum() > 0 and state.model.input_proj.weight.grad is None
    # the token embedding must be as wide as the layers LASP applies the heads to
    wide = config_mod.deep_merge(cfg, {"model": {"token_dim": 16}})
    with pytest.raises(ValueError, match="model.token_dim 16 differs from model.dim 32"):
        _setup(wide, paths)


def test_lengths_in_epochs(tmp_path):
    cfg, _ = tiny_cfg(tmp_path, {"train": {"batch_size": 4, "warmup_epochs": 1.0, "branch_epochs": 2.0,
                                           "snapshot_fractions": [0.5]}})
    paths = make_corpus(tmp_path / "data", n_speech=5, n_audio=8)
    out = train.run(cfg, phase="warmup", out=tmp_path / "w", seed=0, data=data_paths(paths))
    length = json.loads((tmp_path / "w" / "length.json").read_text())
    assert length["warmup_steps"] == math.ceil(13 / 4) == 4 and length["branch_steps"] == math.ceil(2 * 13 / 4)
    assert length["train_clips"] == {"speech": 5, "audio": 8} and _load(out)["step"] == 4
    metrics = pd.read_csv(tmp_path / "w" / "metrics.csv")
    assert metrics["step"].tolist() == [1, 2, 3, 4] and metrics["epoch"].iloc[-1] == pytest.approx(16 / 13)
    branch = train.run(cfg, phase="branch", method="baseline", init=out, out=tmp_path / "b", seed=0,
                       data=data_paths(paths))
    assert _load(branch)["step"] == 7 and sorted(p.name for p in (tmp_path / "b" / "snapshots").iterdir()) == \
        ["step_000004.pt", "step_000007.pt"]                       # snapshots follow the length
    balanced = config_mod.deep_merge(cfg, {"train": {"epoch_size": "balanced"}})
    assert Lengths.of(balanced, [0] * 5 + [1] * 8).warmup_steps == math.ceil(2 * 8 / 4)


def test_ema_warmup():
    m = torch.nn.Linear(2, 1)
    ema = EMA({"m": m}, 0.999, warmup=True)
    assert [ema.decay_at(n) for n in (0, 1, 10)] == [pytest.approx(0.1), pytest.approx(2 / 11), pytest.approx(11 / 20)]
    assert ema.decay_at(10 ** 6) == 0.999 and EMA({"m": m}, 0.999).decay_at(0) == 0.999
    with torch.no_grad():
        m.weight.fill_(1.0)
    ema.shadow["m"]["weight"].zero_()
    ema.update(0)
    assert torch.allclose(ema.shadow["m"]["weight"], torch.full((1, 2), 0.9))


def test_probe_sample_spans_speakers_and_is_seeded():
    spk = [f"s{i}" for i in range(7) for _ in range(i + 1)]          # 7 speakers, 28 clips, unbalanced
    labels = [f"l{i % 4};x" for i in range(12)]                      # 4 primary labels
    rows = pd.DataFrame({"id": [f"sp{i}" for i in range(len(spk))] + [f"au{i}" for i in range(12)],
                         "domain": ["speech"] * len(spk) + ["audio"] * 12,
                         "speaker": spk + [""] * 12, "labels": [""] * len(spk) + labels})
    speaker_of = dict(zip(rows["id"], rows["speaker"]))
    label_of = dict(zip(rows["id"], rows["labels"].str.split(";").str[0]))
    for n in (3, 5, 7, 20):
        s = probes.probe_sample(rows, n, seed=11)
        assert len(s["speech"]) == min(n, len(spk)) and len(set(s["speech"])) == len(s["speech"])
        assert len({speaker_of[i] for i in s["speech"]}) == min(7, n)
        assert len({label_of[i] for i in s["audio"]}) == min(4, n)
        assert s == probes.probe_sample(rows, n, seed=11)
    assert probes.probe_sample(rows, 5, seed=11) != probes.probe_sample(rows, 5, seed=12)


def paper_keys(node: dict, prefix: str = ""):
    """Every key config/paper.yaml sets, dotted (leaves; a mapping set whole counts as its keys)."""
    for k, v in node.items():
        if isinstance(v, dict) and v:
            yield from paper_keys(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"


def test_fidelity_table_covers_every_key_paper_yaml_sets():
    """Each key is named in docs/fidelity.md as `section.key`, or under a `section.*` row."""
    doc = (Path(DEFAULT_CONFIG).parents[1] / "docs" / "fidelity.md").read_text()
    covered = lambda k: f"`{k}`" in doc or any(f"`{'.'.join(k.split('.')[:i])}.*`" in doc
                                                for i in range(1, k.count(".") + 1))
    keys = list(paper_keys(config_mod.read_yaml(PAPER_CONFIG)))
    assert len(keys) > 40
    missing = [k for k in keys if not covered(k)]
    assert not missing, f"docs/fidelity.md has no row for {missing}"
