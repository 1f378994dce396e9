"""Issue 18: executables compiled once per run and shared by categories, host work in a prefetch thread,
the persistent compilation cache, and the time table."""

import json
import os
import pathlib
import subprocess
import sys
import threading
import time

import pytest

from jaxflow_ad import data, engine
from jaxflow_ad.engine import loop
from jaxflow_ad.engine.loop import _Prefetch
from jaxflow_ad.engine.timing import PHASES, Timings
from jaxflow_ad.errors import ConfigError
from tests.engine import toy_method as toy

ROOT = pathlib.Path(__file__).resolve().parents[2]

data.LAYOUTS["toy_two"] = data.Reader(
    name="toy_two",
    modalities=("image", "xyz"),
    spatial=("image", "xyz"),
    splits=("train", "test"),
    list_categories=lambda root: ["toy", "twin"],
    load_split=lambda root, category, split, image_size, **options: toy._split(category, split),
)


def test_a_second_category_with_the_same_config_compiles_nothing(tmp_path, caplog):
    cfg = toy.get_config()
    cfg.data.layout = "toy_two"
    cfg.parallel_categories = "1"
    with caplog.at_level("INFO", "jaxflow_ad"):
        results = engine.run(cfg, tmp_path, "all")
    first, second = results["toy"]["time_s"], results["twin"]["time_s"]
    assert first["compile"] > 0 and second["compile"] == 0.0, (first, second)
    assert set(first) == set(PHASES) | {"total"} and first["train"] > 0 and first["evaluate"] > 0
    m = json.loads((tmp_path / "twin" / "metrics.json").read_text())
    assert m["time_s"] == second
    assert "Where the time went" in (tmp_path / "results.md").read_text()
    assert "executables compiled in this run" in caplog.text
    # the same data gives the same numbers: the shared executables are the right ones
    strip = ("time_s", "train_time_s", "images_per_s")
    assert {k: v for k, v in results["toy"].items() if k not in strip} == {
        k: v for k, v in results["twin"].items() if k not in strip
    }


STRIP = ("time_s", "train_time_s", "images_per_s")


def test_categories_at_the_same_time_give_the_same_numbers_and_compile_once(tmp_path, caplog):
    out, compiled = {}, {}
    for n in (1, 2):
        cfg = toy.get_config()
        cfg.data.layout = "toy_two"
        cfg.parallel_categories = str(n)
        caplog.clear()
        with caplog.at_level("INFO", "jaxflow_ad"):
            results = engine.run(cfg, tmp_path / str(n), "all")
        out[n] = {c: {k: v for k, v in r.items() if k not in STRIP} for c, r in results.items()}
        compiled[n] = [r.getMessage() for r in caplog.records if "executables compiled" in r.getMessage()]
        assert list(results) == ["toy", "twin"]  # in the configured order, whichever finished first
    assert out[1] == out[2]
    assert compiled[1][0].split(";")[1].split("\n")[0] == compiled[2][0].split(";")[1].split("\n")[0]
    assert "2 categories at a time" in compiled[2][0] and "2 categories at a time" not in compiled[1][0]
    summary = json.loads((tmp_path / "2" / "metrics.json").read_text())
    assert summary["run"]["parallel_categories"] == 2 and summary["run"]["wall_s"] > 0
    assert "2 categories at a time" in (tmp_path / "2" / "results.md").read_text()
    # both trained from one executable per stage: the one that waited counts the wait as compile
    times = {c: json.loads((tmp_path / "2" / c / "metrics.json").read_text())["time_s"] for c in out[2]}
    assert all(t["compile"] > 0 for t in times.values()), times


def test_a_failure_stops_the_running_category_with_a_checkpoint_and_starts_no_other():
    started = []

    def fn(category, stop):
        started.append(category)
        if category == "bad":
            time.sleep(0.2)
            raise ValueError("bad data")
        assert stop.wait(10), "the failure did not reach the running category"
        raise loop.Stopped(category, 3)

    with pytest.raises(ValueError, match="bad data"):
        loop._run_concurrently(fn, ["good", "bad", "later"], 2)
    assert started == ["good", "bad"]


def test_a_stopped_category_saves_a_checkpoint_and_a_rerun_gives_the_same_numbers(tmp_path):
    cfg = toy.get_config()
    cfg.data.layout = "toy_two"
    root, _ = loop.resolve_data(cfg)
    stop = threading.Event()
    stop.set()  # as if another category had failed before the first step
    with pytest.raises(loop.Stopped, match="toy: stopped at step 1 "):
        loop.run_category(cfg, tmp_path / "cut", root, "toy", "all", stop=stop)
    steps = sorted(int(p.name) for p in (tmp_path / "cut" / "toy" / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [1]
    resumed = loop.run_category(cfg, tmp_path / "cut", root, "toy", "all")
    whole = loop.run_category(cfg, tmp_path / "whole", root, "toy", "all")
    assert {k: v for k, v in resumed.items() if k not in STRIP} == {k: v for k, v in whole.items() if k not in STRIP}


def test_parallel_categories_auto_and_bad_values(monkeypatch):
    cfg = toy.get_config()
    assert loop.category_workers(cfg, 4) == 2  # one CPU device
    assert loop.category_workers(cfg, 1) == 1
    cfg.parallel_categories = "3"
    assert loop.category_workers(cfg, 4) == 3
    for bad in ("0", "two"):
        cfg.parallel_categories = bad
        with pytest.raises(ConfigError, match="parallel_categories="):
            loop.category_workers(cfg, 4)
    monkeypatch.setattr(loop.jax, "device_count", lambda: 4)
    cfg.parallel_categories = "auto"
    assert loop.category_workers(cfg, 4) == 1
    cfg.parallel_categories = "2"
    with pytest.raises(ConfigError, match="needs one device in one process; this run has 4 devices"):
        loop.category_workers(cfg, 4)


def test_prefetch_gives_the_same_model_as_none(tmp_path):
    out = {}
    for depth in (0, 3):
        cfg = toy.get_config()
        cfg.train.prefetch = depth
        r = engine.run(cfg, tmp_path / str(depth), "all")["toy"]
        out[depth] = {k: v for k, v in r.items() if k not in ("time_s", "train_time_s", "images_per_s")}
    assert out[0] == out[3]


def test_prefetch_thread_keeps_order_runs_ahead_and_raises_in_place():
    made = []

    def items():
        for i in range(6):
            made.append(i)
            if i == 4:
                raise ValueError("bad batch 4")
            yield i

    it = iter(_Prefetch(items(), depth=2))
    assert next(it) == 0
    time.sleep(0.2)
    assert len(made) >= 3  # prepared ahead while the consumer was busy
    assert [next(it) for _ in range(3)] == [1, 2, 3]
    with pytest.raises(ValueError, match="bad batch 4"):
        next(it)
    p = _Prefetch(iter(range(1000)), depth=2)
    p.close()
    assert not any(t.name == "jaxflow_ad-prefetch" and t.is_alive() for t in threading.enumerate() if t is p._thread)


def test_timings_take_nested_phases_out_of_the_outer_one():
    t = Timings()
    with t.phase("train"):
        time.sleep(0.05)
        t.add("compile", 0.02)
        with t.phase("statistics"):
            time.sleep(0.03)
    d = t.as_dict()
    assert d["compile"] == 0.02 and 0.025 <= d["statistics"] < 0.1 and 0.02 < d["train"] < 0.1
    assert d["total"] == pytest.approx(sum(d[p] for p in PHASES), abs=2e-3)


@pytest.mark.timeout(300)
def test_the_persistent_cache_makes_a_second_run_compile_almost_nothing(tmp_path):
    """Two command-line runs of the toy in fresh workdirs with one (empty) cache folder: the second
    loads what the first compiled."""
    cache = tmp_path / "xla"
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", JAXFLOW_AD_CACHE=str(cache))
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"  # the toy's programs are tiny
    compile_s = []
    for name in ("cold", "warm"):
        proc = subprocess.run(
            [sys.executable, str(ROOT / "tests/engine/toy_method.py"), str(tmp_path / name)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f"XLA compilation cache: {cache}" in proc.stderr
        compile_s.append(json.loads((tmp_path / name / "toy" / "metrics.json").read_text())["time_s"]["compile"])
    assert any(cache.iterdir())
    assert compile_s[1] < 0.5 * compile_s[0], compile_s


def test_reading_metrics_every_few_steps_changes_nothing_and_still_names_a_nan(tmp_path):
    out = {}
    for every in ("1", "5"):
        cfg = toy.get_config()
        cfg.train.sync_every = every
        r = engine.run(cfg, tmp_path / str(every), "all")["toy"]
        out[int(every)] = {k: v for k, v in r.items() if k not in ("time_s", "train_time_s", "images_per_s")}
    assert out[1] == out[5]
    log = [json.loads(line) for line in (tmp_path / "5" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "train/align/loss" in r] == list(range(1, 9))  # log_every_steps=1
    cfg = toy.get_config()
    cfg.train.update(sync_every="5", nan_step=12, checkpoint_every_steps=1000)
    from jaxflow_ad.errors import TrainingDiverged

    with pytest.raises(TrainingDiverged, match=r"loss = nan at step 12 "):
        engine.run(cfg, tmp_path / "nan", "all")
    steps = sorted(int(p.name) for p in (tmp_path / "nan" / "toy" / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [8]


def test_hugepage_malloc_env_only_where_it_changes_something():
    from jaxflow_ad.hostmem import hugepage_malloc_env

    madvise = "always [madvise] never\n"
    env = hugepage_malloc_env({"PATH": "/bin"}, madvise, "glibc")
    assert env == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    kept = hugepage_malloc_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, madvise, "glibc")
    assert kept["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert hugepage_malloc_env(env, madvise, "glibc") is None  # set already: no second exec
    assert hugepage_malloc_env({}, "[always] madvise never", "glibc") is None
    assert hugepage_malloc_env({}, "always madvise [never]", "glibc") is None
    assert hugepage_malloc_env({}, madvise, "") is None  # musl and others
    assert hugepage_malloc_env({"JAXFLOW_AD_HUGEPAGES": "0"}, madvise, "glibc") is None


def test_the_command_line_runs_with_the_tunable_where_the_kernel_offers_huge_pages(tmp_path):
    """The re-executed command sees GLIBC_TUNABLES (asked through a config file that records it)."""
    from jaxflow_ad.hostmem import THP_ENABLED, hugepage_malloc_env

    cfg = tmp_path / "probe.py"
    cfg.write_text(
        "import os, ml_collections\n"
        "def get_config():\n"
        f"    open({str(tmp_path / 'env.txt')!r}, 'w').write(os.environ.get('GLIBC_TUNABLES', ''))\n"
        "    return ml_collections.ConfigDict()\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    env.pop("GLIBC_TUNABLES", None)
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.main", f"--config={cfg}", f"--workdir={tmp_path / 'w'}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]  # the empty config is refused, after the probe ran
    try:
        thp = THP_ENABLED.read_text()
    except OSError:
        thp = None
    import platform

    expected = hugepage_malloc_env({}, thp, platform.libc_ver()[0])
    seen = (tmp_path / "env.txt").read_text()
    assert seen == (expected["GLIBC_TUNABLES"] if expected else ""), (seen, thp)


def test_statistics_compile_ahead_while_training_and_only_once(tmp_path, monkeypatch):
    from jaxflow_ad.engine import timing

    made, counts = [], {}
    real = timing.CompileCache.get

    def get(self, key, make_jitted, args, timings=None):
        def make():
            made.append((key.rsplit("|", 1)[-1], threading.current_thread().name))
            return make_jitted()

        return real(self, key, make, args, timings)

    monkeypatch.setattr(timing.CompileCache, "get", get)
    cfg = toy.get_config()
    r = engine.run(cfg, tmp_path / "ahead", "all")["toy"]
    counts["ahead"] = len(made)
    assert ("statistics", "jaxflow_ad-compile-ahead") in made, made
    made.clear()
    monkeypatch.setattr(loop._Fn, "compile_ahead", lambda self, *a: None)
    r0 = engine.run(cfg, tmp_path / "inline", "all")["toy"]
    assert len(made) == counts["ahead"]  # the one compiled ahead was used: nothing compiled twice
    assert {k: v for k, v in r.items() if k not in STRIP} == {k: v for k, v in r0.items() if k not in STRIP}
