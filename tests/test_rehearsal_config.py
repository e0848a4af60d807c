"""config/rehearsal.yaml changes only sizes and paths of config/paper.yaml, so the rehearsal
runs every semantic choice of paper.yaml as written (README "Rehearse the paper path")."""
import fnmatch

import pytest
import yaml

from agrepa import config as agrepa_config
from test_workflow_support import REPO

PAPER = [REPO / "config" / "config.yaml", REPO / "config" / "paper.yaml"]
REHEARSAL = REPO / "config" / "rehearsal.yaml"
FIXTURES = "./results/fixtures/paper/"
PAPER_DATA = "/data/"

#: keys the overlay may set: sizes (dotted patterns; * matches one level)
SIZES = [
    "seeds", "device", "resources.*.*",
    "model.n_layers", "model.dim", "model.n_heads", "model.ff_mult",
    "train.batch_size", "train.warmup_epochs", "train.branch_epochs", "train.checkpoint_every",
    "train.log_every", "train.repa_hidden",
    "train.compile",       # not a size: inductor builds C++ per job on the CPU (tests/test_train_step.py checks compile)
    "tokens.audio.k", "tokens.audio.dim", "tokens.audio.hidden", "tokens.audio.steps",
    "tokens.audio.batch_size", "tokens.audio.window", "tokens.audio.fit_windows", "tokens.beats.k",
    "teachers.batch_size", "probe.t_grid", "probe.n_clips", "probe.batch_size",
    "sample.steps", "sample.batch_size", "sample.max_clips.*",
    "eval.bootstrap", "eval.fad.fad_inf.*", "eval.listening_test.max_clips.*", "eval.convergence.max_clips",
    "eval.heldout.max_clips.*",
    "model.voicebox.n_layers", "model.voicebox.dim", "model.voicebox.n_heads", "model.voicebox.ff_mult",
    "model.cosyvoice.channels", "model.cosyvoice.n_blocks", "model.cosyvoice.n_mid", "model.cosyvoice.n_heads",
    "model.cosyvoice.head_dim", "model.cosyvoice.ff_mult", "model.cosyvoice.enc_layers", "model.cosyvoice.enc_dim",
    "model.cosyvoice.enc_heads", "model.cosyvoice.enc_ff_mult",
    "model.f5.n_layers", "model.f5.conv_layers", "model.f5.dim", "model.f5.n_heads", "model.f5.ff_mult",
    "model.f5.text_dim", "model.f5.conv_mult",
    "report.table4.seeds", "lsac.probe.max_clips.*",
    "report.rr.r1.seeds", "report.rr.r2.seeds", "report.rr.r3.seeds", "report.rr.r3.scales",
    "shards.*",            # scatter / gather job counts (the gathered stores equal the K = 1 ones: tests/test_shards.py)
]
#: keys naming files or directories: the overlay moves paper.yaml's /data/... under the fixtures
PATHS = ["data.librispeech.root", "data.audioset.root", "teachers.semantic.model",
         "teachers.acoustic.checkpoint", "tokens.speech.onnx_path", "tokens.beats.checkpoint", "sample.vocos_model", "eval.asr.model",
         "eval.fad.vggish_checkpoint", "eval.mos.utmos_checkpoint", "eval.mos.aesthetics_checkpoint",
         "eval.events.checkpoint", "eval.events.labels_csv"]
#: a label, and Table 2's rows (cut to one fixed-layer row of each kind, checked below)
OTHER = ["name", "report.table2.methods", "report.rr.r1.methods", "report.rr.r2.methods", "report.rr.r3.methods"]


def leaves(tree, prefix=""):
    """Dotted key -> value of every leaf (lists are leaves)."""
    out = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        out.update(leaves(value, path + ".") if isinstance(value, dict) else {path: value})
    return out


def disallowed(overlay: dict) -> list[str]:
    allowed = SIZES + PATHS + OTHER
    return sorted(k for k in leaves(overlay)
                  if not any(fnmatch.fnmatchcase(k, p) and k.count(".") == p.count(".") for p in allowed))


def overlay():
    return yaml.safe_load(REHEARSAL.read_text())


def test_overlay_sets_only_allow_listed_keys():
    assert disallowed(overlay()) == []


@pytest.mark.parametrize("extra", [{"sample": {"cfg_scale": 1.0}}, {"teachers": {"semantic": {"backend": "ctranslate2"}}},
                                   {"methods": {"repa_l4": {"layers": [2]}}}, {"token_configs": ["A"]},
                                   {"selection": {"strategies": ["foga"]}}, {"eval": {"fad": {"embedding": "whisper-encoder"}}},
                                   {"report": {"table4": {"architectures": ["dit"]}}}, {"model": {"f5": {"dropout": 0.0}}},
                                   {"lsac": {"strategies": ["lsac"]}}, {"tokens": {"beats": {"kind": "kmeans"}}}])
def test_a_semantic_key_is_refused(extra):
    assert disallowed(agrepa_config.deep_merge(overlay(), extra))


def test_paths_mirror_paper_layout_under_the_fixtures():
    paper, over = leaves(agrepa_config.load(PAPER)), leaves(overlay())
    for key in PATHS:
        assert paper[key].startswith(PAPER_DATA), key
        assert over[key] == FIXTURES + paper[key][len(PAPER_DATA):], key
    assert not [k for k, v in paper.items() if isinstance(v, str) and v.startswith(PAPER_DATA) and k not in PATHS]


def test_sizes_cut_but_keep_every_kind_of_run():
    paper = agrepa_config.load(PAPER)
    cfg = agrepa_config.load(PAPER + [REHEARSAL])   # validated
    assert cfg["token_configs"] == paper["token_configs"] == ["A", "B"]
    assert len(cfg["seeds"]) == 2 and set(cfg["seeds"]) <= set(paper["seeds"])
    assert set(cfg["probe"]["t_grid"]) <= set(paper["probe"]["t_grid"])
    assert cfg["selection"] == paper["selection"] and cfg["methods"] == paper["methods"]
    assert cfg["report"]["table4"]["architectures"] == paper["report"]["table4"]["architectures"]
    assert cfg["report"]["table4"]["seeds"] and set(cfg["report"]["table4"]["seeds"]) <= set(paper["report"]["table4"]["seeds"])
    assert cfg["lsac"]["strategies"] == paper["lsac"]["strategies"] and cfg["lsac"]["methods"] == paper["lsac"]["methods"]
    rows = cfg["report"]["table2"]["methods"]
    assert set(rows) <= set(paper["report"]["table2"]["methods"]) and {"baseline", "ag_repa"} <= set(rows)
    kinds = set()
    for m in rows:
        layers = cfg["methods"][m].get("layers")
        if layers:
            contiguous = layers == list(range(min(layers), max(layers) + 1))
            kinds.add("single" if len(layers) == 1 else "band" if contiguous else "set")
    assert kinds == {"single", "set", "band"}
    assert all(max(cfg["methods"][m].get("layers") or [0]) <= cfg["model"]["n_layers"] for m in rows)
    # seed 003: rows cut to one of each kind (RR off, each pooling, each schedule, RR with AG-REPA), R2 kept
    rr, paper_rr = cfg["report"]["rr"], paper["report"]["rr"]
    for table in ("r1", "r2", "r3"):
        assert set(rr[table]["methods"]) <= set(paper_rr[table]["methods"]), table
    assert rr["r2"]["in_all"] == paper_rr["r2"]["in_all"] and rr["baseline"] in rr["r1"]["methods"]
    r1 = [cfg["methods"][m] for m in rr["r1"]["methods"]]
    assert {m.get("rr", {}).get("pool") for m in r1} >= {None, "max", "mean"}
    assert {m.get("rr", {}).get("when") for m in r1 if "rr" in m} >= {None, "always"}
    assert any("selection" in m and "rr" in m for m in r1)
    assert set(rr["r3"]["scales"]) <= set(paper_rr["r3"]["scales"]) and len(rr["r3"]["scales"]) >= 2


@pytest.mark.parametrize("override, key, why", [
    ("teachers.semantic.pad_to_window=false", "teachers.semantic.pad_to_window", "only full 30 s windows"),
    ("tokens.speech.k=64", "tokens.speech.k", "4096 codes"),
    ("tokens.speech.onnx_token_rate=25", "tokens.speech.onnx_token_rate", "50 tokens/s"),
])
def test_paper_combinations_that_cannot_run_fail_at_validation(override, key, why):
    """The two crashes paper.yaml had (a transformers Whisper with unpadded windows; the S3 v1
    tokenizer with the default's 64 codes) are refused when the config is loaded, naming the key."""
    agrepa_config.load(PAPER)
    with pytest.raises(ValueError, match=f"{key}.*{why}"):
        agrepa_config.load(PAPER, [override])
    v2 = "tokens.speech.onnx_path=/data/models/CosyVoice2-0.5B/speech_tokenizer_v2.onnx"
    agrepa_config.load(PAPER, [v2, "tokens.speech.k=6561", "tokens.speech.onnx_token_rate=25"])
