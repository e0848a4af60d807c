"""The streaming safetensors writer: files safetensors reads back bitwise, no tensor kept in memory,
nothing left behind by a job killed before ``close``."""
import gc
import weakref

import pytest
import torch
from hypothesis import given, settings, strategies as st
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from agrepa.safetensors_stream import DTYPES, StreamingSafetensors
from agrepa.store import Store, StoreWriter


def _tensor(dtype: torch.dtype, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if dtype.is_floating_point:
        return (torch.randn(shape, generator=g, dtype=torch.float64) * 100).to(dtype)
    if dtype == torch.bool:
        return torch.rand(shape, generator=g) > 0.5
    info = torch.iinfo(dtype)
    return torch.randint(max(info.min, -1000), min(info.max, 1000), shape, generator=g, dtype=torch.int64).to(dtype)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(sorted(DTYPES, key=str)),
                          st.lists(st.integers(0, 5), min_size=0, max_size=3)), min_size=0, max_size=6),
       st.integers(0, 10**6))
def test_written_file_reads_back_bitwise_as_save_file_writes_it(tmp_path_factory, specs, seed):
    tmp = tmp_path_factory.mktemp("st")
    tensors = {f"t{i}": _tensor(dtype, tuple(shape), seed + i) for i, (dtype, shape) in enumerate(specs)}
    w = StreamingSafetensors(tmp / "a.safetensors")
    for name, t in tensors.items():
        w.add(name, t)
    w.close()
    save_file(tensors, str(tmp / "b.safetensors"))
    ours, theirs = load_file(str(tmp / "a.safetensors")), load_file(str(tmp / "b.safetensors"))
    assert ours.keys() == theirs.keys() == tensors.keys()
    for name, t in tensors.items():
        assert ours[name].dtype == t.dtype and ours[name].shape == t.shape
        assert torch.equal(ours[name], t) and torch.equal(ours[name], theirs[name])
    with safe_open(str(tmp / "a.safetensors"), framework="pt") as h:   # the lazy reader the store uses
        for name, t in tensors.items():
            assert torch.equal(h.get_tensor(name), t)


def test_a_non_contiguous_tensor_is_written_as_its_values(tmp_path):
    t = torch.arange(24, dtype=torch.float32).reshape(4, 6).T
    w = StreamingSafetensors(tmp_path / "x.safetensors")
    w.add("t", t)
    w.close()
    assert torch.equal(load_file(str(tmp_path / "x.safetensors"))["t"], t)


def test_added_tensors_are_not_kept_in_memory(tmp_path):
    w = StreamingSafetensors(tmp_path / "x.safetensors")
    refs = []
    for i in range(4):
        t = torch.full((1000, 80), float(i))
        refs.append(weakref.ref(t))
        w.add(f"clip{i}::mel", t)
        del t
    gc.collect()
    assert all(r() is None for r in refs)          # the writer holds no tensor: their bytes are on disk
    w.close()
    back = load_file(str(tmp_path / "x.safetensors"))
    assert [float(back[f"clip{i}::mel"][0, 0]) for i in range(4)] == [0.0, 1.0, 2.0, 3.0]


def test_an_unclosed_or_discarded_writer_leaves_no_file(tmp_path):
    w = StreamingSafetensors(tmp_path / "x.safetensors")
    w.add("t", torch.ones(10))
    w.discard()
    assert list(tmp_path.iterdir()) == []
    w = StreamingSafetensors(tmp_path / "y.safetensors")
    w.add("t", torch.ones(10))
    del w                                          # a killed job: the spool is unnamed, nothing stays
    gc.collect()
    assert list(tmp_path.iterdir()) == []


def test_bad_input_is_named(tmp_path):
    w = StreamingSafetensors(tmp_path / "x.safetensors")
    w.add("t", torch.ones(2))
    with pytest.raises(ValueError, match="'t' added twice"):
        w.add("t", torch.ones(2))
    with pytest.raises(TypeError, match="'c'.*complex64"):
        w.add("c", torch.ones(2, dtype=torch.complex64))


def test_store_writer_shards_hold_no_pending_tensors(tmp_path):
    """StoreWriter writes through the streaming file: shards of 3 clips, read back by Store."""
    w = StoreWriter(tmp_path / "s", shard_size=3)
    mels = {f"c{i}": torch.randn(7 + i, 4) for i in range(8)}
    refs = []
    for key, m in mels.items():
        x = m.clone()
        refs.append(weakref.ref(x))
        w.add(key, {"mel": x, "n": torch.tensor(i := int(key[1:]))})
        del x
    gc.collect()
    assert all(r() is None for r in refs)
    w.close()
    store = Store(tmp_path / "s")
    assert store.shard_names() == ["shard-00000.safetensors", "shard-00001.safetensors", "shard-00002.safetensors"]
    got = store.load("mel", list(mels))
    assert all(torch.equal(got[k], mels[k]) for k in mels) and i == 7
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == sorted([*store.shard_names(), "index.json"])
