"""The config schema: every shipped config validates; a misspelt key fails before any job,
with the key named; configured paths are checked at parse time."""
import jsonschema
import pytest
import yaml

from agrepa import config as agrepa_config
from test_workflow_support import DEFAULT_CONFIG, REPO, copy_workflow, job_counts, snakemake

SCHEMA = yaml.safe_load(agrepa_config.SCHEMA.read_text())


def objects(schema, path="config"):
    """Every object node of the schema with its path."""
    if isinstance(schema, dict):
        if schema.get("type") == "object" or "properties" in schema:
            yield path, schema
        for key, sub in schema.get("properties", {}).items():
            yield from objects(sub, f"{path}.{key}")
        if isinstance(schema.get("additionalProperties"), dict):
            yield from objects(schema["additionalProperties"], f"{path}.*")


def test_schema_is_valid_and_closed_everywhere():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    for path, node in objects(SCHEMA):
        assert node.get("additionalProperties") is not True and "additionalProperties" in node, path


@pytest.mark.parametrize("overlay", [None, "paper.yaml", "test.yaml"])
def test_shipped_configs_validate(overlay):
    paths = [REPO / "config" / "config.yaml"] + ([REPO / "config" / overlay] if overlay else [])
    jsonschema.validate(agrepa_config.load(paths), SCHEMA)


@pytest.mark.parametrize("text, key", [
    ("model:\n  n_layer: 6\n", "n_layer"),                 # misspelt key inside a section
    ("seed: [0, 1]\n", "seed"),                             # misspelt top-level key
    ("report:\n  figures:\n    dpii: 100\n", "dpii"),       # inside the workflow's own section
    ("methods:\n  repa_l2: {layer: [2]}\n", "layer"),       # inside a method entry
])
def test_misspelt_key_names_the_key(text, key):
    bad = yaml.safe_load(text)
    merged = agrepa_config.deep_merge(agrepa_config.load(DEFAULT_CONFIG), bad)
    with pytest.raises(jsonschema.ValidationError, match=f"'{key}' was unexpected"):
        jsonschema.validate(merged, SCHEMA)


def test_wrong_type_and_enum_fail():
    cfg = agrepa_config.load(DEFAULT_CONFIG)
    for key, value in (("device", "tpu"), ("token_configs", ["C"]), ("seeds", [0, 0])):
        bad = dict(cfg, **{key: value})
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, SCHEMA)


@pytest.fixture
def wf(tmp_path_factory):
    # one copy per test: a dry run writes results/ (the merged config), which the typo test asserts absent
    return copy_workflow(tmp_path_factory.mktemp("wf"))


def test_snakemake_fails_before_any_job_with_the_key_named(wf, tmp_path):
    bad = tmp_path / "typo.yaml"
    bad.write_text("train:\n  warmup_step: 10\n")
    r = snakemake(["--cores", "1", "--configfile", str(bad)], wf)
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "'warmup_step' was unexpected" in out
    assert job_counts(out) == {}                       # nothing was planned, let alone run
    assert not (wf / "results").exists()               # not even the merged config was written


def test_missing_paths_are_named_and_fake_trees_pass(wf, tmp_path):
    r = snakemake(["-n", "--cores", "1", "--configfile", "config/paper.yaml"], wf)
    assert r.returncode != 0
    out = r.stdout + r.stderr
    for key in ("data.librispeech.root", "data.audioset.root", "teachers.acoustic.checkpoint",
                "tokens.speech.onnx_path", "tokens.beats.checkpoint", "eval.fad.vggish_checkpoint",
                "eval.mos.utmos_checkpoint", "eval.mos.aesthetics_checkpoint", "eval.events.checkpoint",
                "eval.events.labels_csv"):
        assert key in out
    assert "AGREPA_SKIP_PATH_CHECK" in out
    # the same config pointed at small fake trees plans fine
    fake = tmp_path / "fake"
    for d in ("LibriSpeech/train-clean-100", "audioset/audio", "whisper-large-v3", "vocos"):
        (fake / d).mkdir(parents=True)
    for f in ("beats.pt", "beats_tokenizer.pt", "s3.onnx", "vggish.pth", "utmos.pt", "aes.pt", "beats_ft.pt",
              "labels.csv"):
        (fake / f).write_bytes(b"x")
    overlay = tmp_path / "fake_paths.yaml"
    overlay.write_text(yaml.safe_dump({
        "data": {"librispeech": {"root": str(fake / "LibriSpeech")}, "audioset": {"root": str(fake / "audioset")}},
        "teachers": {"semantic": {"model": str(fake / "whisper-large-v3")},
                     "acoustic": {"checkpoint": str(fake / "beats.pt")}},
        "tokens": {"speech": {"onnx_path": str(fake / "s3.onnx")},
                   "beats": {"checkpoint": str(fake / "beats_tokenizer.pt")}},
        "sample": {"vocos_model": str(fake / "vocos")},
        "eval": {"asr": {"model": str(fake / "whisper-large-v3")}, "fad": {"vggish_checkpoint": str(fake / "vggish.pth")},
                 "mos": {"utmos_checkpoint": str(fake / "utmos.pt"), "aesthetics_checkpoint": str(fake / "aes.pt")},
                 "events": {"checkpoint": str(fake / "beats_ft.pt"), "labels_csv": str(fake / "labels.csv")}},
    }))
    r = snakemake(["-n", "--cores", "1", "--configfile", "config/paper.yaml", str(overlay)], wf)
    assert r.returncode == 0, r.stdout + r.stderr
    assert job_counts(r.stdout)["data_corpus"] == 2
