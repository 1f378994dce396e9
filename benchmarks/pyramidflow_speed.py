"""PyramidFlow speed and memory: training steps and inference, reversible backprop on and off.

Setting of the official CPU anchors (shared/notes/pyramidflow.md): fully
normalizing flow, 256x256 input, C=16, L=4, kernel 7, CVN; train batch 2,
inference batch 4; D = 2, 4, 8. Inputs as in shared/golden/README.md:
``np.random.default_rng(seed).random((B, 3, H, W), float32)``, ImageNet-normalised
(here NHWC). Every row runs in a fresh subprocess so that its peak memory is
its own: process peak RSS on CPU, peak device memory on GPU.

    python benchmarks/pyramidflow_speed.py                 # all rows
    python benchmarks/pyramidflow_speed.py --depths 4 --steps 5 --no-rev

Official anchors (2 CPU threads): train step 2.81 s (autograd, 2003 MB),
4.21 s (memory-saving, 921 MB); inference 1.25 s per batch of 4 (3.2 img/s).

Memory columns on CPU: "peak MB" is the process's peak RSS including the
compiler; "step MB" is the peak RSS during the timed steps only, after the
compiler's freed memory is returned to the OS (``malloc_trim``) and the
kernel's peak mark is reset (``/proc/self/clear_refs``). The model is
initialised by one jitted call.

Measured 2026-11-22, 2-core AMD EPYC (AVX2) VM, idle, conv_impl=auto, medians:
D=2/4/8 train plain 1.12/2.17/4.12 s (step peak 875/1308/2105 MB),
reversible 1.56/2.86/5.78 s (696/746/847 MB), inference 4.78/2.72/1.37 img/s.
The official code on the same machine 20 minutes before
(pyramidflow_official_torch.py): plain 1.19/2.35/4.59 s, memory-saving
2.12/4.04/7.87 s (1281/1301/1473 MB), inference 4.18/2.42/1.20 img/s. This
VM drifts by up to 10 % within an hour: time both within minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

from memory import hwm_mb, peak_mb, reset_peak_rss, rss_mb  # noqa: E402  (benchmarks/ is on sys.path)

# shared/notes/pyramidflow.md, D=4, (min, median) seconds per train step / inference batch of 4, peak RSS MB.
ANCHORS = {("train", False): (2.81, 2.98), ("train", True): (4.21, 4.31), ("infer", False): (1.25, 1.33)}
ANCHOR_RSS = {False: 2003, True: 921}


def _row(
    kind: str, depth: int, reversible: bool, steps: int, size: int, conv_impl: str = "auto", polyphase: bool = True
) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from configs import pyramidflow as pf_config
    from jaxflow_ad.models.pyramidflow import PyramidFlow, denormalize, normalize  # noqa: F401
    from jaxflow_ad.nn.conv import resolve_impl

    cfg = pf_config.get_config()
    cfg.model.update(
        channels=16,
        levels=4,
        stacks=depth,
        ksize=7,
        volume_norm="CVN",
        reversible=reversible,
        conv_impl=conv_impl,
        up_polyphase=polyphase,
    )
    method = PyramidFlow(cfg)
    batch = 2 if kind == "train" else 4
    x = np.random.default_rng(0).random((batch, 3, size, size), dtype=np.float32)
    images = jnp.asarray(np.transpose(x, (0, 2, 3, 1)))  # [0,1]; the model normalises
    stage = method.stages[0]
    example = {"image": jnp.zeros((1, size, size, 3), jnp.uint8)}
    init = jax.jit(lambda k: stage.init_opt(method.init(k, example), 1))  # one compile, not many eager ops
    state = init(jax.random.PRNGKey(0))
    jax.block_until_ready(state)
    del init
    jax.clear_caches()  # drop the init executable before measuring
    if kind == "train":
        fn = jax.jit(stage.train_step(1), donate_argnums=0)  # the engine's step (models.base.gradient_step)
        args = lambda s: (s, {"image": images}, jax.random.PRNGKey(0))
    else:
        state = state.replace(stats={"template": [jnp.zeros((1, size // 2**i, size // 2**i, 16)) for i in range(4)]})
        fn = jax.jit(method.score)
        args = lambda s: (s, {"image": images}, jax.random.PRNGKey(0))
    t0 = time.perf_counter()
    compiled = fn.lower(*args(state)).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
    if " while(" in compiled.as_text() or jax.devices()[0].platform != "cpu":
        cost = {}  # loops: XLA counts a body once; GPU: library convs (cuDNN) are not counted
    mem = compiled.memory_analysis()
    xla_mb = (
        float("nan")
        if mem is None
        else (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes + mem.temp_size_in_bytes)
        / 2**20
    )
    times = []
    step_peak = compile_peak = rss_before = float("nan")
    for i in range(steps + 1):  # the first call warms caches
        if i == 1 and jax.devices()[0].platform == "cpu":
            compile_peak = peak_mb()  # before the reset: compiler and first call
            if reset_peak_rss():
                step_peak, rss_before = 0.0, rss_mb()
        t0 = time.perf_counter()
        out = compiled(*args(state))
        jax.block_until_ready(out)
        times.append(time.perf_counter() - t0)
        if kind == "train":
            state = out[0]
    times = times[1:]
    if step_peak == 0.0:
        step_peak = hwm_mb()
    elif jax.devices()[0].platform != "cpu":
        step_peak = peak_mb()
    med, mn = float(np.median(times)), float(np.min(times))
    whole_peak = max(peak_mb(), compile_peak) if step_peak == step_peak else peak_mb()
    return {
        "kind": kind,
        "depth": depth,
        "reversible": reversible,
        "batch": batch,
        "compile_s": compile_s,
        "median_s": med,
        "min_s": mn,
        "images_per_s": batch / med,
        "peak_mb": whole_peak,
        "step_peak_mb": step_peak,
        "rss_before_steps_mb": rss_before,
        "conv_impl": resolve_impl(conv_impl, reversible=reversible),
        "polyphase": polyphase,
        "xla_mb": xla_mb,
        "gflop": float(cost.get("flops", float("nan"))) / 1e9,
        "gbytes": float(cost.get("bytes accessed", float("nan"))) / 1e9,
        "device": str(jax.devices()[0].device_kind),
        "platform": jax.devices()[0].platform,
    }


def _rates(reps: int = 7) -> dict:
    """The machine's rates for the roofline columns: the dominant op of the model
    (a direct 7x7 32->32 conv on ``[4,256,256,32]``, XLA's own forward) in GFLOP/s, and
    memory bandwidth (read + write of an elementwise pass over 64 MiB) in GB/s."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax import lax

    x = jnp.ones((4, 256, 256, 32), jnp.float32)
    w = jnp.full((7, 7, 32, 32), 0.01, jnp.float32)
    conv = jax.jit(
        lambda a, b: lax.conv_general_dilated(a, b, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    )
    bump = jax.jit(lambda a: a * 1.5 + 1.0)

    def best(f, *a):  # the fastest of several runs: what the machine can do
        jax.block_until_ready(f(*a))
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            jax.block_until_ready(f(*a))
            ts.append(time.perf_counter() - t0)
        return float(np.min(ts))

    flops = 2 * x.size * 49 * 32
    return {"conv_gflop_s": flops / best(conv, x, w) / 1e9, "mem_gb_s": 2 * x.nbytes / best(bump, x) / 1e9}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depths", default="2,4,8")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--no-rev", action="store_true", help="skip the reversible rows")
    p.add_argument("--no-infer", action="store_true")
    p.add_argument("--conv-impl", default="auto", help="model.conv_impl: auto | xla | im2col | fft | fft_grad")
    p.add_argument("--no-polyphase", action="store_true", help="model.up_polyphase=False")
    p.add_argument("--json", default="", help="also write the rows to this file")
    p.add_argument(
        "--official-json",
        default="",
        help="rows of benchmarks/pyramidflow_official_torch.py --json, timed on this machine: "
        "the summaries then also compare with them",
    )
    p.add_argument("--_row", default="", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a._row == "rates":
        print(json.dumps(_rates()))
        return
    if a._row:
        kind, depth, rev = a._row.split(":")
        print(json.dumps(_row(kind, int(depth), rev == "1", a.steps, a.size, a.conv_impl, not a.no_polyphase)))
        return
    jobs = []
    for d in [int(v) for v in a.depths.split(",")]:
        jobs.append(("train", d, 0))
        if not a.no_rev:
            jobs.append(("train", d, 1))
        if not a.no_infer:
            jobs.append(("infer", d, 0))
    print(
        f"# machine: {platform.node()} {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs; python {platform.python_version()}"
    )
    print(f"# conv_impl={a.conv_impl} up_polyphase={not a.no_polyphase}; load average {os.getloadavg()}")
    print(
        "# official anchors (another VM, 2 threads, D=4), (min, median) s: "
        + ", ".join(f"{k}{' rev' if r else ''} {v}" for (k, r), v in ANCHORS.items())
    )
    rows = []
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(d for d in (root, os.environ.get("PYTHONPATH")) if d))
    out = subprocess.run([sys.executable, __file__, "--_row=rates"], capture_output=True, text=True, env=env)
    rates = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else {}
    if rates:
        print(
            f"# machine rates: direct 7x7 conv {rates['conv_gflop_s']:.0f} GFLOP/s, "
            f"memory {rates['mem_gb_s']:.1f} GB/s (read+write)"
        )
    else:
        print(f"# machine rates: probe FAILED: {out.stderr[-300:]}")
    print(
        "# roofline: 'GFLOP' and 'GB' are XLA's cost analysis of the compiled step (not given where the "
        "step has loops: scanned reversible chain); 'roof s' = max(GFLOP / conv rate, GB / memory rate), "
        "an estimate of the time this op graph needs at those rates (XLA counts every operand as read from "
        "memory: over-counts what stays in cache)"
    )
    print(
        f"{'kind':6} {'D':>2} {'rev':>3} {'batch':>5} {'compile s':>9} {'median s':>9} {'min s':>7} "
        f"{'img/s':>7} {'peak MB':>8} {'step MB':>8} {'GFLOP':>7} {'GB':>6} {'roof s':>7} {'XLA MB':>7}  device"
    )
    for kind, d, rev in jobs:
        cmd = [
            sys.executable,
            __file__,
            f"--_row={kind}:{d}:{rev}",
            f"--steps={a.steps}",
            f"--size={a.size}",
            f"--conv-impl={a.conv_impl}",
        ] + (["--no-polyphase"] if a.no_polyphase else [])
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if out.returncode:
            print(f"{kind:6} {d:>2} {rev:>3} FAILED: {out.stderr[-500:]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        r["roof_s"] = (
            max(r["gflop"] / rates["conv_gflop_s"], r["gbytes"] / rates["mem_gb_s"]) if rates else float("nan")
        )  # NaN (printed 'nan') where there is no estimate
        rows.append(r)
        print(
            f"{kind:6} {d:>2} {'on' if rev else 'off':>3} {r['batch']:>5} {r['compile_s']:>9.2f} "
            f"{r['median_s']:>9.3f} {r['min_s']:>7.3f} {r['images_per_s']:>7.2f} {r['peak_mb']:>8.0f} "
            f"{r['step_peak_mb']:>8.0f} {r['gflop']:>7.1f} {r['gbytes']:>6.2f} {r['roof_s']:>7.3f} "
            f"{r['xla_mb']:>7.0f}  {r['device']}",
            flush=True,
        )
    official = {}
    if a.official_json:
        with open(a.official_json) as f:
            official = {(o["kind"], o["depth"], o["savemem"]): o for o in json.load(f)}
    for r in rows:
        what = f"{r['kind']} D={r['depth']}"
        if r["kind"] == "train":
            what += f" rev={'on' if r['reversible'] else 'off'}"
        line = f"summary: {what}: median {r['median_s']:.3f} s (min {r['min_s']:.3f})"
        on_anchor_setting = r["depth"] == 4 and r["platform"] == "cpu"
        anchor = ANCHORS.get((r["kind"], r["reversible"])) if on_anchor_setting else None
        if anchor:
            line += (
                f"; official anchor median {anchor[1]} s (min {anchor[0]}): "
                f"{anchor[1] / r['median_s']:.2f}x (min {anchor[0] / r['min_s']:.2f}x)"
            )
        o = official.get((r["kind"], r["depth"], r["reversible"]))
        if o:
            line += f"; official on this machine median {o['median_s']:.3f} s: {o['median_s'] / r['median_s']:.2f}x"
        if r["roof_s"] == r["roof_s"]:
            line += f"; roofline {r['roof_s']:.3f} s ({r['gflop']:.0f} GFLOP, {r['gbytes']:.1f} GB)"
        print(line)
    for key, what in (
        ("peak_mb", "whole process, compiler included"),
        ("step_peak_mb", "during the steps"),
        ("xla_mb", "XLA's buffers: arguments, outputs, temporaries"),
    ):
        revs = {r["depth"]: r[key] for r in rows if r["kind"] == "train" and r["reversible"]}
        if 2 in revs and 8 in revs:
            print(
                f"summary: reversible peak memory ({what}) D=8 / D=2 = {revs[8] / revs[2]:.2f} "
                f"({revs[2]:.0f} -> {revs[8]:.0f} MB); official anchor at D=4: {ANCHOR_RSS[True]} MB"
            )
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
