"""MADFlow speed and memory: the frozen multimodal extractor, both training stages, scoring, end to end.

What is timed, each through the engine's own jitted functions on a one-axis mesh
(``jaxflow_ad.engine.parallel``), with the host-to-device copy of every batch
included as in the engine:

* ``extract image``: the image part of the frozen extractor alone
  (``method.extractor.module.image_features``: the backbone and its taps
  concatenated at S), images in, F_img back on the host.
* ``extract``: the whole multimodal extractor (``method.extractor.apply``: image
  backbone, Point-MAE on the organised cloud with its 3-NN interpolation and pooling,
  the depth branch and the foreground masks), inputs in, every tap back on the host:
  what ``engine.features.FeatureCache`` pays once per split.
* ``cma step``: the stage ``cma``'s ``Stage.train_step(steps_per_epoch)`` jitted
  as ``parallel.jit_train_step`` (state replicated and donated, batch sharded) on
  cached features, with the stage's host-side ``prepare_batch`` and a wait for the
  metrics, at the stage's batch (``train.cma_batch_size``).
* ``derive ano``: the flow stage's ``Stage.derive`` (``method.difference_maps``,
  the frozen CMA's ``{"ano": [B, 8S, 8S]}``) on one batch: the engine runs it once
  over the training split when the stage starts.
* ``flow step cached``: the stage ``flow``'s step on cached features and cached
  ``derived["ano"]`` (what the engine runs with ``model.cache_differences``);
  ``flow step recompute``: the same step without ``derived``, the frozen CMA run
  inside every step (only for ``model.fusion=cdcf``, the one fusion that reads the
  cached maps; with ``ca`` the CMA runs inside every step anyway).
* ``score``: ``method.score(state, batch, rng)`` jitted as ``parallel.jit_score``
  on cached features, maps and scores copied back to the host (what
  ``engine.loop.score_split`` pays per batch).
* ``end-to-end``: the extractor and then the score per batch, features kept on the
  device, maps and scores back on the host: inference from raw inputs, reported as
  FPS beside the paper's 7.1 FPS on an RTX 4090 (Table 4, which includes the
  Point-MAE extraction; the paper does not give its batch size).

Inputs (synthetic, ``np.random.default_rng(0)``): uint8 noise images
``[B, S_img, S_img, 3]``; organised clouds ``[B, C, C, 3]`` in metres seen by the
built-in set's pinhole camera (``f = 1000 C / 256`` px): a support plane about 0.40 m
away tilted by 1.7 degrees carrying a 12 mm spherical cap of radius 25 mm (shifted by
up to 5 mm per sample), every point valid; the depth map ``[B, C, C]`` float32
(the cap's height x 100, centred on the foreground, 0 outside) and the foreground
``[B, C, C]`` bool (the cap's disc). Batches larger than the extraction batch
repeat its samples (the cached features are computed once, at ``eval.batch_size``).
Parameters are freshly initialised; timings do not depend on the weights' values,
so ``--random-backbone`` (``model.backbone.random_init=True``, and
``model.points.require_weights=False``; Point-MAE is random whenever
``model.points.weights`` is empty) times the same computation as the real weights.
With the default variant (whose backbone is the offline EfficientNet-Lite0 stand-in
for B5) ``--random-backbone`` builds a random Lite0 with the stand-in's taps (B5
block19/26/35 -> Lite0 block7/10/14), i.e. the network the variant runs.

Per row: compile time apart (``lower().compile()``; the end-to-end row adds the
extractor's and the score's), ``--warmup`` untimed calls, then the median and the
minimum of ``--steps`` timed calls; img/s = batch / median. "XLA MB" is XLA's
memory analysis of the row's executables (arguments + outputs - aliased +
temporaries; summed over both for the end-to-end row, an upper bound); the whole
process's peak (CPU: RSS; GPU: device peak bytes in use, compiler included) is
printed at the end. The optimisers' schedules read a steps-per-epoch of 10 (their
cost does not depend on it). All rows run in one process.

Commands (from the checkout root)::

    # CPU, the default variant (random Lite0 stand-in at 384, cloud 128, Point-MAE G 256 / M 32, half-width CMA)
    .venv/bin/python benchmarks/madflow_speed.py --random-backbone --json runs/madflow_speed_cpu.json
    # smoke size (random Lite0 at 128, cloud 32, 2-layer CMA, 2 flow blocks of hidden 16)
    .venv/bin/python benchmarks/madflow_speed.py --config smoke --steps 2
    # GPU, the paper's setting (random B5 at 768, cloud 224 with G 1024 / M 128, official CMA, FSFlow 3,3,3,5)
    python benchmarks/madflow_speed.py --config paper --random-backbone --steps 10 --json madflow_speed_gpu.json
    # ablations: another fusion or coupling subnet
    .venv/bin/python benchmarks/madflow_speed.py --config smoke --fusion none --subnet plain

``--batch-size`` sets the batch of every row; by default each row uses the
engine's batch for it: ``train.cma_batch_size`` for the CMA step,
``train.batch_size`` for the flow steps, ``eval.batch_size`` for extraction,
``derive`` and scoring.

Measured on the development machine (2-core Intel Xeon VM, CPU only, JAX 0.10.2, idle but
for this script), the default variant with the converted Lite0 weights and a random
Point-MAE, ``.venv/bin/python benchmarks/madflow_speed.py --json runs/madflow_speed_cpu.json``
(1 warm-up + 5 timed calls per row)::

    | row                  | batch | compile s |  median s |    min s |    img/s |   XLA MB |
    |----------------------|-------|-----------|-----------|----------|----------|----------|
    | extract image        |     8 |      0.93 |    1.8296 |   1.8221 |     4.37 |    149.2 |
    | extract              |     8 |      2.10 |    3.4988 |   3.4828 |     2.29 |    502.3 |
    | cma step             |     8 |      1.49 |    0.6338 |   0.6238 |    12.62 |    776.8 |
    | derive ano           |     8 |      0.26 |    0.2499 |   0.2473 |    32.01 |    353.9 |
    | flow step cached     |     8 |      8.74 |    0.4664 |   0.4598 |    17.15 |    404.5 |
    | flow step recompute  |     8 |      8.86 |    0.6775 |   0.6720 |    11.81 |    465.0 |
    | score                |     8 |      1.85 |    0.3731 |   0.3669 |    21.44 |    380.5 |
    | end-to-end           |     8 |      3.95 |    3.8999 |   3.8524 |     2.05 |    882.8 |

Features rgb [12, 12, 384], points [12, 12, 1152], depth [12, 12, 64]; parameters: CMA
6.01 M (half width, one x2 stage), FSFlow 5.69 M (448 channels), extractor 26.52 M (Lite0
4.69 M, Point-MAE 21.83 M); peak RSS 2.2 GB. The cached difference maps make a flow step
1.45x faster (0.47 s against 0.68 s); end to end 2.05 images/s, half of it Point-MAE. At the
paper's setting (B5 at 768, G 1024 / M 128 at 224 px, the official CMA) the trainable
parameters are 18.23 M (CMA) + 7.95 M (FSFlow, 672 channels) = 26.18 M against the paper's
27.4 M (the code's FSE is twice as wide and has 4 filters). The paper setting was not timed:
no GPU was lent to the session that built this, and on this CPU Point-MAE alone takes about
12 s per cloud at G 1024.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # configs, jaxflow_ad
from memory import cpu_model, n_params, peak_mb, xla_mb  # noqa: E402  (benchmarks/ is on sys.path)

VARIANTS = ("", "paper", "smoke")
PAPER_FPS = 7.1  # Table 4, RTX 4090
PAPER_PARAMS_M = 27.4  # Table 4 (trainable: CMA + FSFlow)
OFFICIAL_CMA_M = 18.2  # the official FeatureProjectionConv(1152 -> 608)
STEPS_PER_EPOCH = 10  # only the optimisers' schedules read it


def build_config(a: argparse.Namespace):
    """The variant's config with the command line's overrides, configured as the engine does for a
    category (``models.configure``); ``(config, notes)``."""
    from configs import madflow as madflow_config
    from jaxflow_ad import models
    from jaxflow_ad.backbones import DEFAULT_ARCH, translate_taps

    cfg = madflow_config.get_config(a.config)
    notes = []
    if a.batch_size:
        cfg.train.batch_size = a.batch_size
        cfg.train.cma_batch_size = a.batch_size
        cfg.eval.batch_size = a.batch_size
    if a.fusion:
        cfg.model.fusion = a.fusion
    if a.subnet:
        cfg.model.flow.subnet = a.subnet
    b = cfg.model.backbone
    if a.random_backbone and not b.random_init:
        if not b.weights and not b.require_weights:  # this variant runs the offline Lite0 stand-in
            taps = [str(t) for t in b.taps]
            m = translate_taps(taps, str(b.arch), DEFAULT_ARCH)
            notes.append(
                f"variant {a.config!r} runs the offline {DEFAULT_ARCH} stand-in for {b.arch}: timed as a random "
                f"{DEFAULT_ARCH} with taps {', '.join(f'{t}<-{m[t]}' for t in taps)} (the same network)"
            )
            b.update(arch=DEFAULT_ARCH, taps=tuple(m[t] for t in taps))
        b.update(weights="", random_init=True, require_weights=False)
    if a.random_backbone:
        cfg.model.points.require_weights = False  # Point-MAE is random when model.points.weights is empty
    if b.random_init:
        how = "--random-backbone" if a.random_backbone else f"set by the variant {a.config!r}"
        notes.append(
            f"RANDOM {b.arch} weights (model.backbone.random_init=True, {how}): timings and memory do not "
            "depend on the weights' values"
        )
    return models.configure(cfg, "puck"), notes


def synthetic_inputs(n: int, image_size: int, cloud: int, rng) -> dict:
    """``n`` samples of the extractor's inputs: noise images; a tilted plane at ~0.4 m carrying a spherical
    cap, seen by a pinhole camera (every point valid); its centred depth x 100 and its disc as foreground."""
    import numpy as np

    f = 1000.0 * cloud / 256.0
    u = (np.arange(cloud) - (cloud - 1) / 2) / f  # normalised image coordinates
    xn, yn = np.meshgrid(u, u)
    tilt = np.tan(np.deg2rad(1.7))
    z_plane = 0.4 / (1.0 - tilt * xn)  # the ray meets the plane z = 0.4 + tilt * x
    radius, height = 0.025, 0.012
    xyz, depth, fg = [], [], []
    for _ in range(n):
        cx, cy = rng.uniform(-0.005, 0.005, 2)
        r2 = ((xn * z_plane - cx) ** 2 + (yn * z_plane - cy) ** 2) / radius**2
        h = np.where(r2 < 1.0, height * (1.0 - r2), 0.0)  # the cap's height over the plane
        z = z_plane - h  # the camera looks down +z: the cap is nearer
        xyz.append(np.stack([xn * z, yn * z, z], axis=-1))
        inside = r2 < 1.0
        depth.append(np.where(inside, (h - h[inside].mean()) * 100.0, 0.0))
        fg.append(inside)
    return {
        "image": rng.integers(0, 256, (n, image_size, image_size, 3), np.uint8),
        "xyz": np.asarray(xyz, np.float32),
        "depth": np.asarray(depth, np.float32),
        "foreground": np.asarray(fg, bool),
    }


def measure(a: argparse.Namespace, cfg, notes: list[str]) -> dict:
    """Build the method, initialise it and time every row; ``{"info": .., "rows": [..]}``."""
    import jax
    import numpy as np

    from jaxflow_ad import models
    from jaxflow_ad.engine import parallel

    method = models.build(cfg)
    ext = method.extractor
    stages = {s.name: s for s in method.stages}
    eval_bs, flow_bs = int(cfg.eval.batch_size), int(cfg.train.batch_size)
    cma_bs = int(stages["cma"].batch_size or flow_bs) if "cma" in stages else 0
    dev = jax.devices()[0]
    mesh = parallel.make_mesh()
    for bs, key in ((eval_bs, "eval.batch_size"), (flow_bs, "train.batch_size"), (cma_bs, "train.cma_batch_size")):
        if bs:
            parallel.check_batch_size(bs, key, mesh)

    size = int(cfg.data.image_size)
    cloud = int(cfg.data[str(cfg.data.layout)].get("cloud_size", 0)) or size
    inputs = synthetic_inputs(eval_bs, size, cloud, np.random.default_rng(0))
    rep, data = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    variables = parallel.to_replicated(mesh, ext.variables)
    key = jax.random.PRNGKey(0)
    to_host = lambda tree: jax.tree_util.tree_map(lambda v: np.asarray(jax.device_get(v)), tree)

    def compiled(jitted, *args):
        t0 = time.perf_counter()
        c = jitted.lower(*args).compile()
        return c, time.perf_counter() - t0, xla_mb(c)

    # the extractor, its features at eval_bs (the cache) and their repetition to the training batches
    x0 = parallel.global_batch(mesh, {"x": inputs})["x"]
    ext_jit = jax.jit(ext.apply, in_shardings=(rep, data), out_shardings=data)  # features stay sharded
    ext_c, ext_compile, ext_xla = compiled(ext_jit, variables, x0)
    cached = to_host(ext_c(variables, x0))
    repeat = lambda tree, bs: jax.tree_util.tree_map(lambda v: np.take(v, np.arange(bs) % len(v), axis=0), tree)

    # parameters: one jitted init on batch-1 zeros shaped like the extractor's output, as the engine's example batch
    shapes = ext.output_shapes_like(method.example_inputs(cfg))
    example = {"features": {t: np.zeros(s, np.float32) for t, s in shapes.items()}}
    state = jax.jit(method.init)(key, example)
    n_cma, n_flow = n_params(state.params.get("cma", {})), n_params(state.params["flow"])

    rows = []

    def timed(name: str, bs: int, compile_s: float, xla: float, call, losses=None) -> None:
        for _ in range(a.warmup):
            call()
        ts = []
        for _ in range(a.steps):
            t0 = time.perf_counter()
            call()
            ts.append(time.perf_counter() - t0)
        med, mn = float(np.median(ts)), float(np.min(ts))
        row = {"row": name, "batch": bs, "compile_s": compile_s, "median_s": med, "min_s": mn}
        row.update(images_per_s=bs / med, xla_mb=xla, times_s=ts)
        if losses:
            row["loss_last"] = losses[-1]
            if not np.isfinite(losses[-1]):
                notes.append(f"{name}: the loss became {losses[-1]} (random inputs; timings still valid)")
        rows.append(row)
        _print_row(row)

    # extract image: the backbone part alone
    img_vars = parallel.to_replicated(mesh, ext.variables["image"])
    img0 = parallel.global_batch(mesh, {"x": inputs["image"]})["x"]
    img_jit = jax.jit(ext.module.image_features, in_shardings=(rep, data), out_shardings=data)
    img_c, c_s, xla = compiled(img_jit, img_vars, img0)
    timed(
        "extract image",
        eval_bs,
        c_s,
        xla,
        lambda: to_host(img_c(img_vars, parallel.global_batch(mesh, {"x": inputs["image"]})["x"])),
    )

    # extract: what FeatureCache does per batch, inputs in, features on the host
    timed(
        "extract",
        eval_bs,
        ext_compile,
        ext_xla,
        lambda: to_host(ext_c(variables, parallel.global_batch(mesh, {"x": inputs})["x"])),
    )

    def train_rows(stage, state, variants):
        """Time ``stage``'s jitted step for each ``(name, bs, derived or None)``; returns the updated state."""
        state = parallel.to_replicated(mesh, jax.jit(stage.init_opt, static_argnums=1)(state, STEPS_PER_EPOCH))
        box = {"state": state, "i": 0}
        step_jit = parallel.jit_train_step(mesh, stage.train_step(STEPS_PER_EPOCH))
        for name, bs, derived in variants:
            host = {"features": repeat(cached, bs), **({"derived": derived} if derived is not None else {})}
            b0 = parallel.global_batch(mesh, stage.prepare_batch(host, np.random.default_rng(0)))
            step_c, c_s, xla = compiled(step_jit, box["state"], b0, key)
            losses = []

            def call(host=host, step_c=step_c, losses=losses):  # the engine's step: host prep, copy, step, metrics
                i = box["i"] = box["i"] + 1
                batch = parallel.global_batch(mesh, stage.prepare_batch(host, np.random.default_rng([0, i])))
                box["state"], m = step_c(box["state"], batch, jax.random.fold_in(key, i))
                losses.append(float(m["loss"]))  # the engine waits for the metrics every step

            timed(name, bs, c_s, xla, call, losses)
        return box["state"]

    if "cma" in stages:
        state = train_rows(stages["cma"], state, [("cma step", cma_bs, None)])

    flow = stages["flow"]
    derived = None
    if flow.derive is not None:  # the frozen CMA's difference maps, computed once when the stage starts
        feats_b = {"features": repeat(cached, eval_bs)}
        d_c, c_s, xla = compiled(parallel.jit_score(mesh, flow.derive), state, parallel.global_batch(mesh, feats_b))
        timed("derive ano", eval_bs, c_s, xla, lambda: to_host(d_c(state, parallel.global_batch(mesh, feats_b))))
        derived = repeat(to_host(d_c(state, parallel.global_batch(mesh, feats_b))), flow_bs)
    variants = [("flow step cached", flow_bs, derived)]
    if method.fusion == "cdcf" and derived is not None:
        variants.append(("flow step recompute", flow_bs, None))
    elif method.fusion == "ca":
        notes.append("fusion 'ca' reads no cached maps: its CMA runs inside every flow step (the cached row too)")
    state = train_rows(flow, state, variants)

    # score on cached features; end-to-end: extractor then score, features kept on the device
    score_b = {"image": inputs["image"], "features": cached}
    score_jit = parallel.jit_score(mesh, method.score, num_args=3)
    score_c, score_compile, score_xla = compiled(score_jit, state, parallel.global_batch(mesh, score_b), key)

    def fetch(maps, scores):  # as engine.loop.score_split: maps and scores back on the host
        return np.asarray(jax.device_get(maps)), np.asarray(jax.device_get(scores))

    timed(
        "score",
        eval_bs,
        score_compile,
        score_xla,
        lambda: fetch(*score_c(state, parallel.global_batch(mesh, score_b), key)),
    )

    def end_to_end():
        x = parallel.global_batch(mesh, {"x": inputs})["x"]
        return fetch(*score_c(state, {"image": x["image"], "features": ext_c(variables, x)}, key))

    timed("end-to-end", eval_bs, ext_compile + score_compile, ext_xla + score_xla, end_to_end)

    info = {
        "variant": a.config,
        "image_size": size,
        "cloud_size": cloud,
        "cma_batch": cma_bs,
        "flow_batch": flow_bs,
        "eval_batch": eval_bs,
        "arch": str(cfg.model.backbone.arch),
        "taps": [str(t) for t in cfg.model.backbone.taps],
        "random_backbone": bool(cfg.model.backbone.random_init),
        "random_points": not cfg.model.points.get("weights"),
        "fusion": method.fusion,
        "subnet": str(cfg.model.flow.subnet),
        "cma_arch": str(cfg.model.cma.arch),
        "flow_kernels": [int(k) for k in cfg.model.flow.kernels],
        "flow_hidden": int(cfg.model.flow.hidden),
        "feature_shapes": {t: list(s[1:]) for t, s in shapes.items()},
        "flow_channels": int(method.channels),
        "cma_params": n_cma,
        "flow_params": n_flow,
        "trainable_params": n_cma + n_flow,
        "extractor_image_params": n_params(ext.variables["image"]),
        "extractor_points_params": n_params(ext.variables.get("points", {})),
        "extractor_params": n_params(ext.variables),
        "process_peak_mb": peak_mb(),
        "device": str(dev.device_kind),
        "platform": dev.platform,
        "devices": jax.device_count(),
        "jax": jax.__version__,
        "notes": notes,
        "extractor_note": ext.note,
    }
    return {"info": info, "rows": rows}


WIDTHS = (20, 5, 9, 9, 8, 8, 8)
HEAD = (
    f"| {'row':20} | {'batch':>5} | {'compile s':>9} | {'median s':>9} | {'min s':>8} | {'img/s':>8} | {'XLA MB':>8} |"
)


def _print_row(r: dict) -> None:
    print(
        f"| {r['row']:20} | {r['batch']:>5} | {r['compile_s']:>9.2f} | {r['median_s']:>9.4f} | {r['min_s']:>8.4f} "
        f"| {r['images_per_s']:>8.2f} | {r['xla_mb']:>8.1f} |",
        flush=True,
    )


def main() -> None:
    from jaxflow_ad.models.madflow import FUSIONS, SUBNETS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="", choices=VARIANTS, help="configs/madflow.py variant")
    p.add_argument("--batch-size", type=int, default=0, help="every row's batch (0: the engine's batch per row)")
    p.add_argument("--steps", type=int, default=5, help="timed calls per row (the median is reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per row after compilation")
    p.add_argument(
        "--random-backbone",
        action="store_true",
        help="model.backbone.random_init=True: random image backbone, no weights file (timings are the same)",
    )
    p.add_argument("--fusion", default="", choices=("",) + FUSIONS, help="override model.fusion")
    p.add_argument("--subnet", default="", choices=("",) + SUBNETS, help="override model.flow.subnet")
    p.add_argument("--json", default="", help="also write the header and rows to this file")
    a = p.parse_args()
    if a.steps < 1:
        p.error("--steps must be >= 1")

    import jax

    d = jax.devices()[0]
    print(
        f"# machine: {platform.node()}, CPU {cpu_model()} ({os.cpu_count()} logical CPUs), "
        f"python {platform.python_version()}; load average {os.getloadavg()}"
    )
    print(f"# device: {d.device_kind} (platform {d.platform}, {jax.device_count()} devices), jax {jax.__version__}")
    cfg, notes = build_config(a)
    m, c = cfg.model, cfg.data[str(cfg.data.layout)]
    cma = (
        f"official (width x{m.cma.width_scale}, {m.cma.upsamples} x2 stages)"
        if m.cma.arch == "official"
        else f"paper ({m.cma.layers} layers)"
    )
    print(
        f"# MADFlow config {a.config or '(default)'!r}: {m.backbone.arch} {','.join(m.backbone.taps)} at "
        f"{cfg.data.image_size}x{cfg.data.image_size}; cloud {c.cloud_size}x{c.cloud_size}, Point-MAE G "
        f"{m.points.num_group} / M {m.points.group_size}; fusion {m.fusion}; CMA {cma}; FSFlow kernels "
        f"{tuple(m.flow.kernels)} hidden {m.flow.hidden} subnet {m.flow.subnet}; batches cma "
        f"{cfg.train.cma_batch_size}, flow {cfg.train.batch_size}, eval {cfg.eval.batch_size}; {a.warmup} warm-up + "
        f"{a.steps} timed calls per row"
    )
    for n in notes:
        print(f"# note: {n}")
    print(HEAD)
    print("|" + "|".join("-" * (w + 2) for w in WIDTHS) + "|", flush=True)
    from jaxflow_ad.backbones.weights import WeightsError

    shown = len(notes)
    try:
        res = measure(a, cfg, notes)
    except WeightsError as e:
        sys.exit(f"no backbone weights: {e}\n(timings do not depend on them: pass --random-backbone)")
    info, rows = res["info"], res["rows"]
    cma_m = f"{info['cma_params'] / 1e6:.2f} M" if info["cma_params"] else f"none (fusion {info['fusion']!r})"
    print("# features: " + ", ".join(f"{t} {s}" for t, s in info["feature_shapes"].items()))
    print(
        f"# parameters: CMA {cma_m} (official CMA {OFFICIAL_CMA_M} M), FSFlow "
        f"{info['flow_params'] / 1e6:.2f} M ({info['flow_channels']} channels), trainable "
        f"{info['trainable_params'] / 1e6:.2f} M (paper Table 4: {PAPER_PARAMS_M} M); frozen extractor "
        f"{info['extractor_params'] / 1e6:.2f} M (image {info['extractor_image_params'] / 1e6:.2f} M, Point-MAE "
        f"{info['extractor_points_params'] / 1e6:.2f} M)"
    )
    if info["extractor_note"]:
        print(f"# extractor: {info['extractor_note']}")
    for n in info["notes"][shown:]:
        print(f"# note: {n}")
    e2e = next(r for r in rows if r["row"] == "end-to-end")
    print(
        f"# end-to-end: {e2e['images_per_s']:.2f} FPS (batch {e2e['batch']}, {info['device']}) against the "
        f"paper's {PAPER_FPS} FPS on an RTX 4090 (Table 4; batch not stated)"
    )
    mem = "peak RSS" if info["platform"] == "cpu" else "peak device memory"
    print(f"# memory: {mem} of the whole process, compiler included: {info['process_peak_mb']:.0f} MB")
    print(f"# load average at the end {os.getloadavg()}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"info": info, "rows": rows, "cpu": cpu_model(), "node": platform.node()}, f, indent=2)


if __name__ == "__main__":
    main()
