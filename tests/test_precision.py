"""The shared autocast helper (agrepa.device.autocast_dtype / autocast / full_precision) and the
inference jobs it drives (``inference.precision``): bf16 on CUDA and fp32 on the CPU for the shipped
configs, so every CPU result is the fp32 one; forced bf16 on the CPU exercises the autocast path,
and FoG-A stays fp32 under any enclosing autocast."""
import pandas as pd
import pytest
import torch

from agrepa import config as config_mod
from agrepa.device import PRECISIONS, autocast, autocast_dtype, full_precision
from agrepa.evaluation import heldout
from agrepa.generation import sampling
from agrepa.model.dit import build_model
from agrepa.probing.foga import foga_naive, foga_per_sample
from agrepa.probing.probes import bitc_scorer, run_probes
from test_dataset import VOCAB, make_corpus, tiny_cfg
from test_foga import make_inputs, make_model
from test_probes import make_batch, make_heads
from test_sampling import _requests, tiny_model
from test_workflow_support import DEFAULT_CONFIG, REPO

CUDA, CPU = torch.device("cuda"), torch.device("cpu")


@pytest.mark.parametrize("overlays", [[], ["config/paper.yaml"], ["config/test.yaml"], ["config/rehearsal.yaml"]])
def test_shipped_configs_autocast_bf16_on_cuda_and_fp32_on_cpu(overlays):
    cfg = config_mod.load([DEFAULT_CONFIG, *(REPO / o for o in overlays if (REPO / o).exists())])
    for key in ("train.precision", "inference.precision"):
        section, leaf = key.split(".")
        p = cfg[section][leaf]
        assert autocast_dtype(p, CUDA, key) is torch.bfloat16        # only device.type is read: no CUDA call
        assert autocast_dtype(p, "cuda:1", key) is torch.bfloat16
        assert autocast_dtype(p, CPU, key) is None


def test_forced_precisions_and_a_bad_value_names_the_key():
    assert PRECISIONS == ("auto", "bf16", "fp32")
    assert autocast_dtype("fp32", CUDA, "inference.precision") is None
    assert autocast_dtype("bf16", CPU, "inference.precision") is torch.bfloat16
    with pytest.raises(ValueError, match="inference.precision"):
        autocast_dtype("fp16", CUDA, "inference.precision")


def test_autocast_context_is_off_for_fp32_and_full_precision_turns_it_off():
    with autocast(None, CPU):
        assert not torch.is_autocast_enabled("cpu")
    with autocast(torch.bfloat16, CPU):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") is torch.bfloat16
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype is torch.bfloat16
        with full_precision(CPU):
            assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype is torch.float32


def test_foga_is_fp32_under_an_enclosing_bf16_autocast():
    m, inputs = make_model(), make_inputs()
    exact = foga_per_sample(m, *inputs, mode="eval")
    with autocast(torch.bfloat16, CPU):
        under = foga_per_sample(m, *inputs, mode="eval")
        naive = foga_naive(m, *inputs)
    assert under.dtype is torch.float32 and torch.equal(under, exact)
    assert torch.allclose(naive, exact.mean(0), atol=1e-6)


def test_run_probes_bf16_keeps_foga_and_lasp_and_autocasts_gradnorm():
    m, heads = make_model(n_layers=3), make_heads()
    batches = {"speech": [make_batch(0, seed=1)], "audio": [make_batch(1, seed=3)]}
    scorers = {"speech": lambda b: bitc_scorer(heads, "speech", b["emb_semantic"]),
               "audio": lambda b: bitc_scorer(heads, "audio", b["emb_acoustic"])}
    kw = dict(noise_seed=5, scorers=scorers, config_name="A", seed=2)
    fp32 = run_probes(m, batches, [0.25, 0.75], **kw)
    bf16 = run_probes(m, batches, [0.25, 0.75], amp=torch.bfloat16, **kw)
    exact = fp32.probe != "gradnorm"
    pd.testing.assert_frame_equal(fp32[exact], bf16[exact])              # FoG-A and LASP: fp32, bitwise
    a, b = fp32[~exact].score.to_numpy(), bf16[~exact].score.to_numpy()
    assert not (a == b).all()                                             # the gradient norms ran in bf16
    assert abs(b - a).max() <= 0.05 * abs(a).max()                       # bf16 tolerance: 5 % of the largest


def test_sampling_autocast_keeps_the_ode_state_fp32_and_is_near_fp32():
    m, reqs = tiny_model(), _requests()
    kw = dict(steps=3, cfg_scale=2.0, sway=0.0, seed=1, batch_size=3, progress=False)
    fp32 = sampling.generate(m, reqs, **kw)
    assert all(torch.equal(x, y) for x, y in zip(fp32, sampling.generate(m, reqs, amp=None, **kw)))
    bf16 = sampling.generate(m, reqs, amp=torch.bfloat16, **kw)
    for x, y in zip(fp32, bf16):
        assert y.dtype is torch.float32 and not torch.equal(x, y)
        assert (x - y).abs().max() <= 0.05 * x.abs().max()               # bf16 tolerance: 5 % of the largest


def test_inference_dtype_reads_inference_precision():
    cfg = config_mod.load(DEFAULT_CONFIG)
    assert sampling.inference_dtype(cfg, CPU) is None and sampling.inference_dtype(cfg, CUDA) is torch.bfloat16
    cfg["inference"]["precision"] = "fp32"
    assert sampling.inference_dtype(cfg, CUDA) is None


def test_heldout_under_bf16_passes_the_objective_check_and_is_near_fp32(tmp_path):
    cfg, _ = tiny_cfg(tmp_path)
    cfg["eval"]["heldout"].update(t_grid=[0.2, 0.8], batch_size=4)
    paths = make_corpus(tmp_path / "data")
    torch.manual_seed(0)
    model = build_model(cfg, VOCAB)
    with torch.no_grad():                      # adaLN-Zero starts as the identity: randomise so the output varies
        for p in model.parameters():
            p.normal_(0, 0.05)
    data = heldout.heldout_data(cfg, paths["manifest"], paths["mels"], paths["tokens"], paths["semantic"],
                                paths["acoustic"], split="train")
    fp32 = heldout.heldout_losses(model, data, cfg)
    cfg["inference"]["precision"] = "bf16"                                # bf16 autocast on the CPU
    bf16 = heldout.heldout_losses(model, data, cfg)
    assert list(fp32["id"]) == list(bf16["id"]) and not fp32["loss"].equals(bf16["loss"])
    assert ((fp32["loss"] - bf16["loss"]).abs() <= 0.02 * fp32["loss"]).all()   # bf16 tolerance: 2 % per clip
