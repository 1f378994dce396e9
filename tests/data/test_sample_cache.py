import os

import numpy as np

from jaxflow_ad.data.mvtec import stat_file
from jaxflow_ad.data.sample_cache import SampleCache


def _counting(value):
    calls = []

    def compute():
        calls.append(1)
        return {"a": np.full((2, 3), value, np.float32), "b": np.arange(4)}

    return compute, calls


def test_hit_after_miss_and_equal_arrays(tmp_path):
    src = tmp_path / "x.tiff"
    src.write_bytes(b"0123")
    cache = SampleCache(tmp_path / "c", "op", {"t": 0.5})
    compute, calls = _counting(1.5)
    first = cache.get([(src, stat_file(src))], compute)
    second = SampleCache(tmp_path / "c", "op", {"t": 0.5}).get([(src, stat_file(src))], compute)
    assert len(calls) == 1
    for k in first:
        np.testing.assert_array_equal(first[k], second[k])
        assert first[k].dtype == second[k].dtype
    assert [p.name for p in (tmp_path / "c").iterdir() if p.name.startswith(".tmp")] == []


def test_changed_file_or_setting_recomputes(tmp_path):
    src = tmp_path / "x.tiff"
    src.write_bytes(b"0123")
    compute, calls = _counting(1.0)
    SampleCache(tmp_path / "c", "op", {"t": 0.5}).get([(src, stat_file(src))], compute)
    SampleCache(tmp_path / "c", "op", {"t": 0.6}).get([(src, stat_file(src))], compute)
    SampleCache(tmp_path / "c", "other", {"t": 0.5}).get([(src, stat_file(src))], compute)
    assert len(calls) == 3
    src.write_bytes(b"012345")
    os.utime(src, ns=(1, 1))
    SampleCache(tmp_path / "c", "op", {"t": 0.5}).get([(src, stat_file(src))], compute)
    assert len(calls) == 4


def test_unreadable_entry_is_recomputed(tmp_path, caplog):
    src = tmp_path / "x.tiff"
    src.write_bytes(b"0123")
    cache = SampleCache(tmp_path / "c", "op", {})
    compute, calls = _counting(2.0)
    cache.get([(src, stat_file(src))], compute)
    entry = tmp_path / "c" / f"{cache.key([(src, stat_file(src))])}.npz"
    entry.write_bytes(entry.read_bytes()[:20])  # truncated, as by a full disk
    out = cache.get([(src, stat_file(src))], compute)
    assert len(calls) == 2 and "unreadable" in caplog.text
    np.testing.assert_array_equal(out["a"], np.full((2, 3), 2.0, np.float32))
    assert cache.get([(src, stat_file(src))], compute)["b"].tolist() == [0, 1, 2, 3] and len(calls) == 2


def test_no_directory_computes_every_time(tmp_path):
    src = tmp_path / "x.tiff"
    src.write_bytes(b"0")
    cache = SampleCache(None, "op", {})
    compute, calls = _counting(0.0)
    cache.get([(src, stat_file(src))], compute)
    cache.get([(src, stat_file(src))], compute)
    assert len(calls) == 2 and cache.misses == 2 and cache.hits == 0


def test_every_source_file_is_in_the_key(tmp_path):
    a, b = tmp_path / "depth.png", tmp_path / "pose.txt"
    a.write_bytes(b"d")
    b.write_bytes(b"p")
    cache = SampleCache(tmp_path / "c", "op", {})
    compute, calls = _counting(1.0)
    cache.get([(a, stat_file(a)), (b, stat_file(b))], compute)
    b.write_bytes(b"pose")
    cache.get([(a, stat_file(a)), (b, stat_file(b))], compute)
    assert len(calls) == 2
