"""FAIR inference speed: images/s of the full scoring path at 256x256 for UNet widths c = 128, 64, 32.

What is timed is ``jax.jit(FAIR.score)`` exactly as the engine's evaluation
runs it: grayscale + 2nd-order Butterworth high-pass (FFT) extraction, the UNet
restoration in eval mode (running BatchNorm statistics), and the anomaly map
(2-scale MSGMS + CIELAB a/b colour term, 21x21 mean filter) with the image
score (its maximum). Weights are freshly initialised (speed does not depend on
their values). Inputs are ``np.random.default_rng(0).random((B, H, W, 3))``
in [0, 1]. Compile time is measured separately (``lower().compile()``); then
one warm-up call, then ``--steps`` timed calls (each waits for the maps and
scores on the device; the copy back to the host is not included). Every row
runs in a fresh subprocess, so its peak memory is its own (process peak RSS on
CPU, peak device memory on GPU).

    python benchmarks/fair_speed.py                       # c = 128, 64, 32, batch 1
    python benchmarks/fair_speed.py --widths 32 --batch 8 --steps 10

Paper anchors (Table 5, PyTorch on an RTX 3090 Ti, 256x256; the official
``test.py`` scores one image at a time): c = 128: 57 FPS, c = 64: 100 FPS,
c = 32: 132 FPS.

Measured here (2-core x86_64 VM, CPU, JAX 0.10.2, batch 1, 5 timed calls; load
average 0.9-1.7, nothing else running): c = 128 (69.05M params): 0.45 img/s
(median 2.227 s, min 2.197 s, compile 1.0 s, peak RSS 1673 MB); c = 64: 1.61
img/s (0.623 / 0.620 s, 881 MB); c = 32: 4.20 img/s (0.238 / 0.231 s, 724 MB).
At load average ~5 (two other runs): 0.11 / 0.41 / 1.16 img/s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

from memory import peak_mb  # noqa: E402  (benchmarks/ is on sys.path)

PAPER_FPS = {128: 57.0, 64: 100.0, 32: 132.0}


def _row(width: int, batch: int, steps: int, size: int, extractor: str) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from configs import fair as fair_config
    from jaxflow_ad.models.fair import FAIR

    cfg = fair_config.get_config("paper")  # 256 px, official scoring settings
    cfg.data.image_size = size
    cfg.model.base_width = width
    cfg.model.extractor = extractor
    method = FAIR(cfg)
    state = method.init(jax.random.PRNGKey(0), {"image": np.zeros((1, size, size, 3), np.uint8)})
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(state.params))
    images = {"image": jnp.asarray(np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), np.uint8))}
    key = jax.random.PRNGKey(0)
    fn = jax.jit(method.score)
    t0 = time.perf_counter()
    compiled = fn.lower(state, images, key).compile()
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(steps + 1):  # the first call warms caches
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(state, images, key))
        times.append(time.perf_counter() - t0)
    times = times[1:]
    med, mn = float(np.median(times)), float(np.min(times))
    dev = jax.devices()[0]
    return {
        "width": width,
        "batch": batch,
        "size": size,
        "extractor": extractor,
        "params": n_params,
        "compile_s": compile_s,
        "median_s": med,
        "min_s": mn,
        "images_per_s": batch / med,
        "images_per_s_best": batch / mn,
        "peak_mb": peak_mb(),
        "device": str(dev.device_kind),
        "platform": dev.platform,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--widths", default="128,64,32", help="UNet base widths c")
    p.add_argument("--batch", type=int, default=1, help="images per scoring call")
    p.add_argument("--steps", type=int, default=5, help="timed calls per row (>= 5 recommended)")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--extractor", default="butterworth", help="model.extractor")
    p.add_argument("--json", default="", help="also write the rows to this file")
    p.add_argument("--_row", type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a._row:
        print(json.dumps(_row(a._row, a.batch, a.steps, a.size, a.extractor)))
        return
    print(
        f"# machine: {platform.node()} {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs; python {platform.python_version()}; load average {os.getloadavg()}"
    )
    print(
        f"# FAIR.score at {a.size}x{a.size}, extractor={a.extractor}, batch {a.batch}, {a.steps} timed calls; "
        f"paper (RTX 3090 Ti): {PAPER_FPS} FPS"
    )
    print(
        f"{'c':>4} {'params M':>8} {'batch':>5} {'compile s':>9} {'median s':>9} {'min s':>7} "
        f"{'img/s':>8} {'best':>8} {'peak MB':>8}  device"
    )
    rows = []
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(d for d in (root, os.environ.get("PYTHONPATH")) if d))
    for width in [int(v) for v in a.widths.split(",")]:
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                f"--_row={width}",
                f"--batch={a.batch}",
                f"--steps={a.steps}",
                f"--size={a.size}",
                f"--extractor={a.extractor}",
            ],
            capture_output=True,
            text=True,
            env=env,
        )
        if out.returncode:
            print(f"{width:>4} FAILED: {out.stderr[-500:]}", flush=True)
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(r)
        print(
            f"{width:>4} {r['params'] / 1e6:>8.2f} {r['batch']:>5} {r['compile_s']:>9.2f} {r['median_s']:>9.3f} "
            f"{r['min_s']:>7.3f} {r['images_per_s']:>8.2f} {r['images_per_s_best']:>8.2f} {r['peak_mb']:>8.0f}  "
            f"{r['device']} ({r['platform']})",
            flush=True,
        )
    for r in rows:
        ref = PAPER_FPS.get(r["width"])
        vs = f", {r['images_per_s'] / ref:.3f}x the paper's {ref:g} FPS (RTX 3090 Ti)" if ref else ""
        print(
            f"summary: c={r['width']} batch {r['batch']}: {r['images_per_s']:.2f} img/s median "
            f"({r['images_per_s_best']:.2f} best), compile {r['compile_s']:.1f} s on {r['device']}{vs}"
        )
    print(f"# load average at the end {os.getloadavg()}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
