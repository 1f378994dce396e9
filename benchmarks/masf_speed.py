"""MASF speed: the frozen teacher, the student step, the coreset, and inference with and without TTSA.

Rows (each jitted once, compile time apart, ``--warmup`` untimed calls, then the median of ``--steps``
timed calls, results back on the host):

* ``teacher``: the frozen extractor on a batch of uint8 images (what the feature cache pays once per split).
* ``step``: ``Stage.train_step`` of the one stage on cached features (loss, gradients, AdamW update).
* ``step, no spectral term``: the same with ``model.spectral_weight = 0``; the difference is the cost of
  the float32 spectral-consistency term (two FFT2s per scale and their gradients).
* ``coreset N``: greedy k-center selection of ``ratio * N`` rows (at most ``max_size``) of ``N``
  prototypes of the deepest tap's width, with PatchCore's random projection, as ``fit_statistics`` runs it.
* ``score``: ``method.score`` on cached features (TTSA off); ``score TTSA n``: with ``n`` phase-perturbed
  views, the teacher run on each view inside the scorer.

Commands (from the checkout root)::

    .venv/bin/python benchmarks/masf_speed.py                      # the default variant (Lite0 stand-in, 256 px)
    .venv/bin/python benchmarks/masf_speed.py --config smoke --steps 3
    python benchmarks/masf_speed.py --config paper --random-backbone --json masf_gpu.json   # WRN-50-2, on a GPU

``--random-backbone`` builds the teacher with random weights (timings do not depend on their values;
the paper variant needs it where no converted WideResNet-50-2 checkpoint exists).

Measured on the development machine (2-core Intel Xeon VM, CPU only, JAX 0.10.2, idle but for this
script), ``.venv/bin/python benchmarks/masf_speed.py`` (the default variant: Lite0 stand-in at 256 px,
keys/values pooled 4 / 2 / 1; batch 8, 1 warm-up + 5 timed calls; the coreset rows count prototypes of
112 channels, "img/s" there is rows/s)::

    | row                      | batch | compile s |  median s |    img/s |
    |--------------------------|-------|-----------|-----------|----------|
    | teacher                  |     8 |      0.61 |    0.7219 |    11.08 |
    | step                     |     8 |      8.85 |    0.6180 |    12.94 |
    | step, no spectral term   |     8 |      8.50 |    0.6288 |    12.72 |
    | coreset 2000             |  2000 |      0.20 |    0.0096 | 208478.66 |
    | coreset 8000             |  8000 |      0.14 |    0.1224 |  65383.25 |
    | coreset 30000            | 30000 |      0.12 |    1.5716 |  19088.35 |
    | score                    |     8 |      3.95 |    0.6535 |    12.24 |
    | score TTSA 5             |     8 |     14.79 |    6.5158 |     1.23 |

The float32 spectral term costs nothing measurable here (the two steps agree within noise: the FFTs of
maps of at most 64x64 are small beside the attention and the convolutions). TTSA with 5 views costs 10x
the plain scorer on a CPU (the teacher and the students run once per view); the paper reports 15 ms
and 75 ms per image on its GPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, ".")

from configs import masf as masf_config  # noqa: E402
from jaxflow_ad.models import masf as M  # noqa: E402
from jaxflow_ad.nn.memory_bank import greedy_coreset  # noqa: E402


def _time(fn, args, warmup: int, steps: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    for _ in range(warmup):
        jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        jax.device_get(compiled(*args))
        times.append(time.perf_counter() - t0)
    return compile_s, statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--random-backbone", action="store_true")
    ap.add_argument("--coreset-sizes", default="2000,8000,30000")
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)

    cfg = masf_config.get_config(args.config)
    if args.random_backbone:
        cfg.model.backbone.random_init = True
        cfg.model.backbone.require_weights = False
    b, s = args.batch_size, int(cfg.data.image_size)
    images = np.random.default_rng(0).integers(0, 256, (b, s, s, 3), dtype=np.uint8)
    rows = []

    def row(name, fn, fargs, n_images):
        c, med = _time(fn, fargs, args.warmup, args.steps)
        rows.append({"row": name, "batch": n_images, "compile_s": c, "median_s": med, "img_per_s": n_images / med})
        print(f"| {name:24s} | {n_images:5d} | {c:9.2f} | {med:9.4f} | {n_images / med:8.2f} |", flush=True)

    where = f"{jax.devices()[0].platform} ({platform.processor() or platform.machine()})"
    print(f"MASF speed, config {args.config!r}, {where}")
    print("| row                      | batch | compile s |  median s |    img/s |")
    print("|--------------------------|-------|-----------|-----------|----------|")
    method = M.MASF(cfg)
    ext = method.extractor
    variables = jax.tree_util.tree_map(jnp.asarray, ext.variables)
    row("teacher", ext.apply, (variables, jnp.asarray(images)), b)
    feats = {k: np.asarray(v) for k, v in ext(images).items()}
    batch = {"image": images, "features": feats}
    state = method.init(jax.random.key(0), batch)
    for name, weight in (("step", float(cfg.model.spectral_weight)), ("step, no spectral term", 0.0)):
        c = cfg.copy_and_resolve_references()
        c.model.spectral_weight = weight
        m = M.MASF(c)
        stage = m.stages[0]
        st = stage.init_opt(state, steps_per_epoch=10)
        prepared = stage.prepare_batch(batch, np.random.default_rng(0))
        row(name, stage.train_step(10), (st, prepared, jax.random.key(1)), b)

    width = method.channels[-1]
    bank = cfg.model.bank
    for n in [int(x) for x in args.coreset_sizes.split(",") if x]:
        x = jnp.asarray(np.random.default_rng(1).standard_normal((n, width)), jnp.float32)
        k = min(int(bank.max_size), max(1, int(np.ceil(float(bank.ratio) * n))))
        proj = int(bank.projection_dim) if int(bank.projection_dim) < width else None
        row(f"coreset {n}", lambda x, k=k, proj=proj: greedy_coreset(x, k, projection_dim=proj), (x,), n)

    state = method.statistics_from(state, [batch])
    for views in (0, int(cfg.model.ttsa.views) or 5):
        c = cfg.copy_and_resolve_references()
        c.model.ttsa.views = views
        m = M.MASF(c)
        row("score" if views == 0 else f"score TTSA {views}", m.score, (state, batch, jax.random.key(0)), b)

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": args.config, "device": str(jax.devices()[0]), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
