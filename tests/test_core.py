"""Config merging, atomic writes and the sharded tensor store."""
import os

import pytest
import torch

from agrepa import config, io
from agrepa.store import Store, StoreWriter
from test_workflow_support import DEFAULT_CONFIG


def test_deep_merge_and_overrides(tmp_path):
    over = tmp_path / "over.yaml"
    over.write_text("model: {dim: 32}\n")
    cfg = config.load([DEFAULT_CONFIG, over], ["model.n_heads=2", "seeds=[5]"])
    assert cfg["model"]["dim"] == 32 and cfg["model"]["n_heads"] == 2 and cfg["seeds"] == [5]
    assert cfg["model"]["n_layers"] == config.load(DEFAULT_CONFIG)["model"]["n_layers"]  # untouched keys stay
    assert config.deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"b": 3}}) == {"a": {"b": 3, "c": 2}}


def test_a_config_missing_a_key_fails_naming_the_key(tmp_path):
    import yaml

    full = yaml.safe_load(DEFAULT_CONFIG.read_text())
    del full["train"]["ema_decay"]
    partial = tmp_path / "partial.yaml"
    partial.write_text(yaml.safe_dump(full))
    with pytest.raises(ValueError, match="'train.ema_decay' is missing"):
        config.load(partial)
    with pytest.raises(ValueError, match="train.*'lr_typo'"):
        config.load(DEFAULT_CONFIG, ["train.lr_typo=1"])
    with pytest.raises(ValueError, match="'model.dim'"):
        config.load(DEFAULT_CONFIG, ["model.dim=wide"])


def test_config_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ValueError, match="bad.yaml: not valid YAML"):
        config.load(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n")
    with pytest.raises(ValueError, match="list.yaml: a config must be a mapping"):
        config.load(lst)
    with pytest.raises(ValueError, match="expected KEY.PATH=VALUE"):
        config.load(DEFAULT_CONFIG, ["model.dim"])


def test_default_config_loads():
    cfg = config.load(DEFAULT_CONFIG)
    assert cfg["audio"]["sample_rate"] == 24000 and cfg["audio"]["n_mels"] == 100


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "out.json"
    io.write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("killed")
    assert io.read_json(target) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_store_roundtrip_and_incomplete_store(tmp_path):
    w = StoreWriter(tmp_path / "s", meta={"k": 1}, shard_size=2)
    tensors = {f"clip{i}": torch.randn(i + 1, 3) for i in range(5)}
    for i, (key, t) in enumerate(tensors.items()):
        w.add(key, {"x": t, "n": torch.tensor(i)})
    w.close()
    s = Store(tmp_path / "s" / "index.json")
    assert s.meta == {"k": 1} and len(s) == 5 and "clip3" in s
    assert len(list((tmp_path / "s").glob("shard-*.safetensors"))) == 3
    for key, t in tensors.items():
        assert torch.equal(s.get(key)["x"], t)
    assert torch.equal(s.load("x")["clip4"], tensors["clip4"])
    with pytest.raises(KeyError, match="nope"):
        s.get("nope")
    os.remove(tmp_path / "s" / "index.json")
    with pytest.raises(FileNotFoundError, match="store index missing"):
        Store(tmp_path / "s")


def test_store_rejects_duplicate_and_reserved_ids(tmp_path):
    w = StoreWriter(tmp_path / "s")
    w.add("a", {"x": torch.zeros(1)})
    with pytest.raises(ValueError, match="added twice"):
        w.add("a", {"x": torch.zeros(1)})
    with pytest.raises(ValueError, match="reserved separator"):
        w.add("a::b", {"x": torch.zeros(1)})


def test_read_json_required_keys_name_file_and_key(tmp_path):
    path = tmp_path / "conf.json"
    io.write_json(path, {"kind": "kmeans"})
    assert io.read_json(path, required=("kind",)) == {"kind": "kmeans"}
    with pytest.raises(KeyError, match="conf.json: missing key 'k'"):
        io.read_json(path, required=("kind", "k"))
