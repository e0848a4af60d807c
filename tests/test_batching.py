"""Batches of per-clip jobs (agrepa/batching.py): row batches made one at a time, longest clips first."""
import pandas as pd
import pytest

from agrepa.batching import batches, longest_first, row_batches


def _manifest(durations):
    return pd.DataFrame({"id": [f"c{i}" for i in range(len(durations))], "duration": durations})


def test_longest_first_sorts_by_duration_and_keeps_manifest_order_for_ties():
    m = longest_first(_manifest([3.0, 10.0, 3.0, 7.5, 10.0]))
    assert m["id"].tolist() == ["c1", "c4", "c3", "c0", "c2"]


def test_row_batches_are_dicts_of_every_row_once_in_order():
    m = _manifest([1.0, 2.0, 3.0, 4.0, 5.0])
    got = list(row_batches(m, 2, "teachers.batch_size"))
    assert [[r["id"] for r in b] for b in got] == [["c0", "c1"], ["c2", "c3"], ["c4"]]
    assert got[0][1] == {"id": "c1", "duration": 2.0}
    assert [list(b) for b in batches([1, 2, 3], 2, "k")] == [[1, 2], [3]]


@pytest.mark.parametrize("fn", [lambda s: list(row_batches(_manifest([1.0]), s, "tokens.batch_size")),
                                lambda s: list(batches([1], s, "tokens.batch_size"))])
def test_a_batch_size_below_one_names_its_key(fn):
    with pytest.raises(ValueError, match="tokens.batch_size: must be >= 1, got 0"):
        fn(0)
