"""FAD embedding backends (agrepa.evaluation.embeddings): VGGish in the torchvggish format, the registry."""
import numpy as np
import pytest
import torch

from agrepa import config

from agrepa.evaluation import embeddings
from test_workflow_support import DEFAULT_CONFIG


def test_vggish_front_end_framing_and_mel_matrix():
    w = embeddings.vggish_mel_matrix()
    assert w.shape == (257, 64) and w.min() >= 0 and w.max() <= 1 and not w[0].any()
    centers = np.argmax(w, axis=0) * 8000 / 256
    assert np.all(np.diff(centers) >= 0) and 125 < centers[0] < 200 and 7000 < centers[-1] < 7500
    sr = 24000
    ex = embeddings.vggish_examples(np.random.default_rng(0).normal(size=2 * sr) * 0.1, sr)
    assert ex.shape == (2, 96, 64)        # 2 s -> 198 frames of 10 ms -> 2 whole 0.96 s examples
    short = embeddings.vggish_examples(np.zeros(sr // 4) + 0.01, sr)
    assert short.shape == (1, 96, 64)     # padded to one example
    assert np.isfinite(ex).all()


def test_vggish_loads_torchvggish_state_dict(tmp_path):
    torch.manual_seed(0)
    net = embeddings.VGGish()
    state = net.state_dict()
    expected = {f"features.{i}.{p}" for i in (0, 3, 6, 8, 11, 13) for p in ("weight", "bias")} | \
               {f"embeddings.{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")}
    assert set(state) == expected
    torch.save(state, tmp_path / "vggish.pth")
    cfg = config.load(DEFAULT_CONFIG)
    cfg["eval"]["fad"].update(embedding="vggish", vggish_checkpoint=str(tmp_path / "vggish.pth"))
    emb = embeddings.build_embedding(cfg)
    wave = np.random.default_rng(1).normal(size=48000).astype(np.float32) * 0.1
    rows = emb.embed(wave, 24000)
    assert rows.shape == (2, 128) and np.isfinite(rows).all()
    with torch.no_grad():
        ref = net.eval()(torch.from_numpy(embeddings.vggish_examples(wave, 24000))[:, None]).numpy()
    assert np.allclose(rows, ref, atol=1e-5)
    # a wrong state dict is a clear error naming the file
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="bad.pth"):
        embeddings.VGGishEmbedding.from_checkpoint(tmp_path / "bad.pth")


def test_registry_is_the_extension_point():
    class Energy(embeddings.Embedding):
        name, dim = "energy", 1

        def embed(self, wave, sample_rate):
            return np.array([[float(np.mean(np.square(wave)))]])

    embeddings.register_embedding("energy-test")(lambda cfg: Energy())
    try:
        cfg = config.load(DEFAULT_CONFIG)
        cfg["eval"]["fad"]["embedding"] = "energy-test"
        assert embeddings.build_embedding(cfg).embed(np.ones(10), 24000).shape == (1, 1)
    finally:
        del embeddings.EMBEDDINGS["energy-test"]
    with pytest.raises(KeyError, match="unknown embedding"):
        embeddings.build_embedding(cfg)


def test_vggish_resampling_is_fadtks_kaiser_filter():
    import torchaudio

    from agrepa.evaluation import embeddings

    rng = np.random.default_rng(0)
    wave = rng.normal(size=24000).astype(np.float32) * 0.1
    got = embeddings.resample_16k(wave, 24000)
    want = torchaudio.functional.resample(torch.from_numpy(wave), 24000, 16000, lowpass_filter_width=64,
                                          rolloff=0.9475937167399596, resampling_method="sinc_interp_kaiser",
                                          beta=14.769656459379492).numpy()
    np.testing.assert_array_equal(got, want)
    default = torchaudio.functional.resample(torch.from_numpy(wave), 24000, 16000).numpy()
    # the filters differ where it matters for the top mel bands: near Nyquist
    ex_k = embeddings.vggish_examples(wave, 24000)
    assert not np.allclose(got, default, atol=1e-4)
    assert ex_k.shape[-1] == embeddings.VGGISH_BANDS
