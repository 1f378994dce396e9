"""Device utilisation of a whole run: the training steps/s a run achieved against the bare step's.

Runs ``python -m experiments.main --config=<config> --workdir=<fresh folder>`` (extra
``--set key=value`` pass through as ``--config.key=value``), reads each category's ``train``
seconds from its ``metrics.json`` (the "where the time went" table: compile, statistics and
checkpoints are outside it) and the steps every stage ran, then times each stage's bare train
step: the same jitted step on one prepared, sharded batch already on the device, called
``--steps`` times after a warm-up (median; no data loading, no host work, no metric reads).

    utilisation = sum over stages (steps x bare step seconds) / train seconds

100 % means the loop keeps the device as busy as back-to-back steps would; the rest is host
work the prefetch thread did not hide, metric reads (``train.sync_every``) and logging. With
``parallel_categories`` > 1 two categories share the device, so each one's figure is its share
and their sum can pass 100 % (the second category used what one left idle).

Usage (from the checkout root; nothing else running)::

    .venv/bin/python benchmarks/utilisation.py --set parallel_categories=1
    .venv/bin/python benchmarks/utilisation.py                            # as make run
    .venv/bin/python benchmarks/utilisation.py --config configs/pyramidflow.py:paper --set data.categories=gravel
    .venv/bin/python benchmarks/utilisation.py --config configs/fair.py

Measured numbers are in the closing note of issue 18 (CPU); on a GPU the last two lines are the
checks that issue asks for.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_command(config: str, workdir: pathlib.Path, sets: list[str]) -> float:
    cmd = [sys.executable, "-m", "experiments.main", f"--config={config}", f"--workdir={workdir}"]
    cmd += [f"--config.{s}" for s in sets]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def bare_steps(config_path: str, sets: list[str], category: str, steps: int) -> list[dict]:
    """Per stage: steps the engine plans for ``category`` and the median bare step time."""
    import jax
    import numpy as np

    from jaxflow_ad import models
    from jaxflow_ad.engine import loop, parallel
    from jaxflow_ad.engine.features import FeatureCache

    config = _load_config(config_path, sets)
    root, _ = loop.resolve_data(config)
    cfg = models.configure(config, category)
    method = models.build(cfg)
    reader = loop.data_reader(cfg)
    train = reader.load_split(
        root, category, "train", int(cfg.data.image_size), resize=cfg.data.resize, **loop.reader_options(cfg)
    )
    train, _ = loop.holdout_split(cfg, train)
    mesh = parallel.make_mesh()
    eval_bs = int(cfg.eval.batch_size)
    if method.extractor is not None:
        with tempfile.TemporaryDirectory() as tmp:
            train = FeatureCache(pathlib.Path(tmp), mesh, eval_bs, 2**40).attach(method.extractor, train)
    state = parallel.to_replicated(
        mesh, jax.jit(method.init)(jax.random.PRNGKey(cfg.seed), loop.example_batch(method, train))
    )
    rows = []
    for p in loop.plan_stages(method, cfg, len(train), category):
        stage = p.stage
        state = parallel.to_replicated(mesh, stage.init_opt(state, p.steps_per_epoch))
        split = train
        if stage.derive is not None:
            split = train.with_samples(derived=loop.derive_split(stage.derive, state, train, mesh, eval_bs))
        batch = stage.prepare_batch(split.take(np.arange(p.batch_size)), np.random.default_rng(0))
        batch = parallel.global_batch(mesh, batch)
        step = parallel.jit_train_step(mesh, stage.train_step(p.steps_per_epoch))
        key = jax.random.PRNGKey(1)
        t0 = time.perf_counter()
        state, m = step(state, batch, key)
        jax.block_until_ready(m)
        compile_s = time.perf_counter() - t0
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            state, m = step(state, batch, key)
            jax.block_until_ready(m)
            times.append(time.perf_counter() - t0)
        rows.append(
            {
                "stage": stage.name,
                "steps": p.end - p.begin,
                "batch_size": p.batch_size,
                "bare_step_s": float(np.median(times)),
                "first_call_s": compile_s,
            }
        )
    return rows


def _load_config(config_path: str, sets: list[str]):
    import importlib.util

    path, _, arg = config_path.partition(":")
    spec = importlib.util.spec_from_file_location("_bench_config", ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg) if arg else module.get_config()
    for s in sets:
        key, _, value = s.partition("=")
        *parents, leaf = key.split(".")
        node = config
        for name in parents:
            node = node[name]
        old = node[leaf]
        node[leaf] = type(old)(value) if not isinstance(old, bool) else value.lower() in ("1", "true")
    return config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/pyramidflow.py")
    ap.add_argument("--set", action="append", default=[], help="key=value, passed as --config.key=value")
    ap.add_argument("--steps", type=int, default=10, help="timed bare steps per stage")
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    import jax

    dev = jax.devices()[0]
    print(
        f"# machine: {platform.node()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"{jax.device_count()} x {dev.device_kind} ({dev.platform}), load average {os.getloadavg()}"
    )
    with tempfile.TemporaryDirectory(prefix="utilisation_") as tmp:
        workdir = pathlib.Path(tmp) / "run"
        wall = run_command(a.config, workdir, a.set)
        summary = json.loads((workdir / "metrics.json").read_text())
    out = {"config": a.config, "set": a.set, "wall_s": wall, "run": summary.get("run", {}), "categories": {}}
    print(f"\n{a.config} {' '.join(a.set)}: {wall:.1f} s wall ({summary.get('run', {})})\n")
    print("| category | stage | steps | bare step (ms) | train s | steps/s run | steps/s bare | utilisation |")
    print("|---|---|---|---|---|---|---|---|")
    for category, r in sorted(summary["categories"].items()):
        stages = bare_steps(a.config, a.set, category, a.steps)
        train_s = r["time_s"]["train"]
        busy = sum(s["steps"] * s["bare_step_s"] for s in stages)
        steps = sum(s["steps"] for s in stages)
        out["categories"][category] = {"train_s": train_s, "stages": stages, "utilisation": busy / train_s}
        for s in stages:
            print(
                f"| {category} | {s['stage']} | {s['steps']} | {1e3 * s['bare_step_s']:.1f} | {train_s:.1f} | "
                f"{steps / train_s:.2f} | {1 / s['bare_step_s']:.2f} | {100 * busy / train_s:.0f} % |"
            )
    if a.json:
        pathlib.Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(a.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    from jaxflow_ad.hostmem import reexec_with_hugepage_malloc

    reexec_with_hugepage_malloc()  # the bare steps get the allocator the command gets
    main()
