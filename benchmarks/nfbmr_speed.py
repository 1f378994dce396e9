"""NF-BMR speed and memory: the frozen extractor, both training stages and inference, with and without the cache.

What is timed, each through the engine's own jitted functions on a one-axis mesh
(``jaxflow_ad.engine.parallel``), with the host-to-device copy of every batch
included as in the engine:

* ``extract``: the frozen source network (``method.extractor.apply``, jitted with
  the images sharded over the mesh), images in, features back on the host: what
  ``engine.features.FeatureCache`` pays once per split.
* ``<stage> cached``: ``Stage.train_step(steps_per_epoch)`` jitted as
  ``parallel.jit_train_step`` (state replicated and donated, batch sharded) on
  precomputed features, with the stage's host-side ``prepare_batch`` and a wait
  for the metrics: exactly what the engine runs per step (stages ``flow`` and
  ``mapping``).
  The mapping stage's cached row also reads the flow outputs ``z`` the engine
  computes once when the stage starts (``Stage.derive``), as the engine does.
* ``mapping features-cached``: cached extractor features, but the frozen flow
  run inside every step (the engine without ``model.cache_flow_outputs``).
* ``<stage> no cache``: the extractor on the images, then the same step on its
  (device-resident) output, per batch: what a pipeline without a feature cache
  pays per step. The difference between the two rows is what the cache saves.
* ``score cached``: ``method.score(state, batch, rng)`` jitted as
  ``parallel.jit_score`` on cached features, maps and scores copied back to the
  host (what ``engine.loop.score_split`` reports as images/s);
  ``score no cache``: extractor + score per batch (end-to-end inference).

Inputs: ``np.random.default_rng(0).integers(0, 256, (B, H, W, 3), uint8)``; the
cached features are the extractor's output on them. Parameters are freshly
initialised (one jitted ``init``); timings do not depend on the weights' values,
so ``--random-backbone`` (``model.backbone.random_init=True``: random backbone
weights, no weights file) times the same computation as the real weights do.
No converted Lite0/B5 weights exist on the development machine: use it there.
With the default variant ("", whose backbone is the offline EfficientNet-Lite0
stand-in for B5) ``--random-backbone`` builds a random Lite0 with the stand-in's
tap (B5 ``block35`` -> Lite0 ``block14``), i.e. the network the variant runs.

Per row: compile time apart (``lower().compile()``; every executable is compiled
once and shared by the rows that use it, the extractor's compile time added to
the "no cache" rows'), ``--warmup`` untimed calls, then the median and minimum
of ``--steps`` timed calls. Memory: "step MB" is the peak during the timed calls (CPU: process peak
RSS after returning the compiler's freed memory to the OS and resetting the
kernel's peak mark; GPU: the device's peak bytes in use, which is cumulative
over the process unless ``--isolate``); "XLA MB" is XLA's memory analysis of the
row's executables (arguments + outputs - aliased + temporaries; summed over the
extractor and the step for the "no cache" rows, an upper bound); the whole
process's peak (compiler included) is printed at the end. All rows run in one
process by default (quick); ``--isolate`` runs each in a fresh subprocess so
that its peak memory is its own (slower: every row rebuilds and recompiles).

Commands (from the checkout root)::

    # CPU, the default variant (Lite0 stand-in at 384, flow hidden 256, BMR width 256, batch 8)
    .venv/bin/python benchmarks/nfbmr_speed.py --random-backbone --json runs/nfbmr_speed_cpu.json
    # smoke size (random Lite0 block4 at 64x64): about 30 s on 2 busy cores (--isolate: 2.5 min)
    .venv/bin/python benchmarks/nfbmr_speed.py --config smoke --steps 3
    # GPU, the paper's setting (random B5 block35 at 768x768, hidden/width 1024, batch 8; eval batch 4)
    python benchmarks/nfbmr_speed.py --config paper --random-backbone --steps 10 --json nfbmr_speed_gpu.json
    # other sizes
    .venv/bin/python benchmarks/nfbmr_speed.py --random-backbone --image-size 256 --batch-size 4 --steps 5

``--batch-size`` sets the batch of every row; by default the training rows use
``train.batch_size`` and the extract/score rows ``eval.batch_size`` (the
engine's extraction and scoring batch). The closing estimate of a whole
training run uses the config's epochs and ``--train-images`` (60 for the
built-in categories; MVTec AD has 60 to 391 per category).

Measured on the development machine (2-core Intel Xeon VM, CPU only, JAX 0.10.2,
idle but for this script), the default variant with the converted Lite0 weights,
``.venv/bin/python benchmarks/nfbmr_speed.py --json runs/nfbmr_speed_cpu.json``
(1 warm-up + 5 timed calls per row, 66 s in all)::

    | row                      | batch | compile s | median s | img/s  | step MB | XLA MB |
    |--------------------------|-------|-----------|----------|--------|---------|--------|
    | extract                  |     8 |      0.66 |   1.8964 |   4.22 |     792 |  148.4 |
    | flow cached              |     8 |      1.11 |   0.1910 |  41.89 |     609 |  125.3 |
    | flow no cache            |     8 |      1.77 |   2.0953 |   3.82 |     803 |  273.7 |
    | mapping cached           |     8 |      1.48 |   0.0601 | 133.11 |     587 |   77.2 |
    | mapping features-cached  |     8 |      1.72 |   0.1191 |  67.20 |     617 |   60.0 |
    | mapping no cache         |     8 |      2.37 |   1.9841 |   4.03 |     847 |  208.4 |
    | score cached             |     8 |      0.42 |   0.0716 | 111.78 |     631 |   35.5 |
    | score no cache           |     8 |      1.08 |   1.9179 |   4.17 |     876 |  183.9 |

Lite0 block14 features [12, 12, 192]; parameters: extractor 4.69 M (frozen), flow
5.31 M, mapping 0.83 M; process peak RSS 876 MB. The feature cache makes a flow
step 11x and a mapping step 33x faster; the cached flow outputs halve the mapping
step (0.060 s against 0.119 s). Estimated training for 60 images and 40 + 40
epochs: 84.5 s with the caches, 19.0 min without. The paper setting (B5 at 768)
has not been run on a GPU: none was lent to the sessions that built this. On this
CPU it was timed with random B5 weights (``--config paper --random-backbone
--steps 3 --warmup 1``, 10 min 49 s; the rows from ``mapping cached`` on ran
beside other jobs, load average up to 3, so they are upper bounds): extraction
15.9 s per batch of 4 (0.25 img/s); flow step 5.76 s cached / 39.0 s without the
cache; mapping step 5.35 s (min 3.54) on cached flow outputs, 6.39 s running the
flow, 45.2 s without any cache; scoring 1.81 s / 21.7 s per batch of 4; features
[24, 24, 304]; parameters: extractor 17.7 M, flow 33.6 M, mapping 11.3 M; peak
RSS 1.8 GB. 300 + 300 epochs on 60 images would take about 6.5 hours here with
the caches (49 hours without): the paper setting wants a GPU.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # configs, jaxflow_ad
from memory import cpu_model, hwm_mb, n_params, peak_mb, reset_peak_rss, rss_mb, xla_mb  # noqa: E402  (benchmarks/ is on sys.path)

VARIANTS = ("", "paper", "smoke")


def build_config(a: argparse.Namespace):
    """The variant's config with the command line's overrides; ``(config, notes)``."""
    from configs import nfbmr as nfbmr_config
    from jaxflow_ad.backbones import DEFAULT_ARCH, translate_taps

    cfg = nfbmr_config.get_config(a.config)
    notes = []
    if a.image_size:
        cfg.data.image_size = a.image_size
    if a.batch_size:
        cfg.train.batch_size = a.batch_size
        cfg.eval.batch_size = a.batch_size
    b = cfg.model.backbone
    if a.random_backbone and not b.random_init:
        if not b.weights and not b.require_weights:  # this variant runs the offline Lite0 stand-in
            tap = translate_taps([str(b.tap)], str(b.arch), DEFAULT_ARCH)[str(b.tap)]
            notes.append(
                f"variant {a.config!r} runs the offline {DEFAULT_ARCH} stand-in for {b.arch} {b.tap}: "
                f"timed as a random {DEFAULT_ARCH} {tap} (the same network)"
            )
            b.update(arch=DEFAULT_ARCH, tap=tap)
        b.update(weights="", random_init=True, require_weights=False)
    if b.random_init:
        how = "--random-backbone" if a.random_backbone else f"set by the variant {a.config!r}"
        notes.append(
            f"RANDOM {b.arch} weights (model.backbone.random_init=True, {how}; no weights file needed): "
            "timings and memory do not depend on the weights' values"
        )
    return cfg, notes


def _init_opt(stage, spe, state):
    return stage.init_opt(state, spe)


def row_names(a: argparse.Namespace) -> list[str]:
    """The rows this config has (``model.score=flow_only`` has no mapping stage)."""
    cfg, _ = build_config(a)
    stages = ["flow"] + ([] if cfg.model.score == "flow_only" else ["mapping"])
    rows = ["extract"]
    for s in stages:
        rows += [f"{s} cached"] + ([f"{s} features-cached"] if s == "mapping" else []) + [f"{s} no cache"]
    return rows + ["score cached", "score no cache"]


def measure(a: argparse.Namespace, wanted: list[str]) -> dict:
    """Build the method once and time the ``wanted`` rows in this process; ``{"info": .., "rows": [..]}``."""
    import jax
    import numpy as np

    from jaxflow_ad.engine import parallel
    from jaxflow_ad.models.nfbmr import NFBMR

    cfg, notes = build_config(a)
    size = int(cfg.data.image_size)
    train_bs, eval_bs = int(cfg.train.batch_size), int(cfg.eval.batch_size)
    dev = jax.devices()[0]
    on_cpu = dev.platform == "cpu"
    mesh = parallel.make_mesh()
    parallel.check_batch_size(train_bs, "train.batch_size", mesh)
    parallel.check_batch_size(eval_bs, "eval.batch_size", mesh)

    method = NFBMR(cfg)
    ext, tap = method.extractor, method.tap
    stages = {s.name: s for s in method.stages}
    spe = max(1, int(a.train_images) // train_bs)  # only schedules read it; NF-BMR's optimisers have none
    rng = np.random.default_rng(0)
    images = {bs: rng.integers(0, 256, (bs, size, size, 3), np.uint8) for bs in sorted({train_bs, eval_bs})}
    feat_shape = ext.output_shapes((1, size, size, 3))[tap][1:]

    rep, data = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    variables = parallel.to_replicated(mesh, ext.variables)
    ext_jit = jax.jit(ext.apply, in_shardings=(rep, data), out_shardings=data)  # features stay sharded
    ext_exe = {}  # batch size -> (compiled, compile_s, xla MB)
    exe = {}  # "flow" | "mapping" | "score" -> (compiled, compile_s, xla MB)

    def extractor(bs):
        if bs not in ext_exe:
            x = parallel.global_batch(mesh, {"x": images[bs]})["x"]
            t0 = time.perf_counter()
            c = ext_jit.lower(variables, x).compile()
            ext_exe[bs] = (c, time.perf_counter() - t0, xla_mb(c))
        return ext_exe[bs]

    cached = {}  # batch size -> host features {tap: [B, h, w, c]}, what the cache holds

    def features(bs):
        if bs not in cached:
            c = extractor(bs)[0]
            out = c(variables, parallel.global_batch(mesh, {"x": images[bs]})["x"])
            cached[bs] = {t: np.asarray(jax.device_get(v)) for t, v in out.items()}
        return cached[bs]

    flow_outputs = {}  # batch size -> host {"z": ..}: the mapping stage's derived inputs

    def derived(stage, bs, state):
        if bs not in flow_outputs:
            f = parallel.jit_score(mesh, stage.derive)
            out = f(state, parallel.global_batch(mesh, {"features": features(bs)}))
            flow_outputs[bs] = {k: np.asarray(jax.device_get(v)) for k, v in out.items()}
        return flow_outputs[bs]

    example = {"features": {tap: np.zeros((1, *feat_shape), np.float32)}}
    init = jax.jit(lambda k: stages["flow"].init_opt(method.init(k, example), spe))
    state = parallel.to_replicated(mesh, init(jax.random.PRNGKey(0)))
    jax.block_until_ready(state)
    n_flow = n_params(state.params["flow"])
    n_map = n_params(state.params.get("mapping", {}))
    del init
    key = jax.random.PRNGKey(0)

    def run_row(name: str, state):
        """Compile and time one row; returns ``(row, state)`` (a training row returns its updated state)."""
        kind, _, mode = name.partition(" ")
        bs = train_bs if kind in stages else eval_bs
        host_images = images[bs]
        ext_c, ext_compile, ext_xla = extractor(bs)
        box = {"state": state, "i": 0, "losses": []}
        if kind == "extract":
            compile_s, xla = ext_compile, ext_xla

            def call():  # what FeatureCache does per batch: images in, features on the host
                out = ext_c(variables, parallel.global_batch(mesh, {"x": host_images})["x"])
                return {t: np.asarray(jax.device_get(v)) for t, v in out.items()}

        elif kind in stages:
            stage = stages[kind]
            feats = features(bs)
            # the mapping stage's "cached" row also reads the flow outputs computed once (Stage.derive);
            # "features cached" recomputes them every step, as "no cache" does
            with_z = stage.derive is not None and mode == "cached"
            host = {"features": feats, **({"derived": derived(stage, bs, state)} if with_z else {})}
            ekey = (kind, with_z)
            if ekey not in exe:  # compiled once, shared by the rows with the same batch structure
                step_jit = parallel.jit_train_step(mesh, stage.train_step(spe))
                b0 = parallel.global_batch(mesh, stage.prepare_batch(host, np.random.default_rng(0)))
                t0 = time.perf_counter()
                c = step_jit.lower(state, b0, key).compile()
                exe[ekey] = (c, time.perf_counter() - t0, xla_mb(c))
            step_c, compile_s, xla = exe[ekey]

            def step(batch):
                i = box["i"] = box["i"] + 1
                box["state"], m = step_c(box["state"], batch, jax.random.fold_in(key, i))
                box["losses"].append(float(m["loss"]))  # the engine waits for the metrics every step

            if mode in ("cached", "features-cached"):

                def call():  # the engine's step: host preparation, copy of the features, step
                    batch = stage.prepare_batch(host, np.random.default_rng([0, box["i"]]))
                    step(parallel.global_batch(mesh, batch))

            else:
                compile_s, xla = compile_s + ext_compile, xla + ext_xla

                def call():  # no cache: copy of the images, extractor, step on its output
                    step({"features": ext_c(variables, parallel.global_batch(mesh, {"x": host_images})["x"])})

        else:  # score
            feats = features(bs)
            if kind not in exe:
                score_jit = parallel.jit_score(mesh, method.score, num_args=3)
                b0 = parallel.global_batch(mesh, {"image": host_images, "features": feats})
                t0 = time.perf_counter()
                c = score_jit.lower(state, b0, key).compile()
                exe[kind] = (c, time.perf_counter() - t0, xla_mb(c))
            score_c, compile_s, xla = exe[kind]

            def fetch(maps, scores):  # as engine.loop.score_split: maps and scores back on the host
                return np.asarray(jax.device_get(maps)), np.asarray(jax.device_get(scores))

            if mode == "cached":

                def call():
                    return fetch(
                        *score_c(state, parallel.global_batch(mesh, {"image": host_images, "features": feats}), key)
                    )

            else:
                compile_s, xla = compile_s + ext_compile, xla + ext_xla

                def call():
                    x = parallel.global_batch(mesh, {"x": host_images})["x"]
                    return fetch(*score_c(state, {"image": x, "features": ext_c(variables, x)}, key))

        for _ in range(a.warmup):
            call()
        if on_cpu:
            before = rss_mb() if reset_peak_rss() else float("nan")
        else:
            before = (dev.memory_stats() or {}).get("bytes_in_use", 0) / 2**20
        ts = []
        for _ in range(a.steps):
            t0 = time.perf_counter()
            call()
            ts.append(time.perf_counter() - t0)
        step_peak = (hwm_mb() if before == before else float("nan")) if on_cpu else peak_mb()
        med, mn = float(np.median(ts)), float(np.min(ts))
        row = {
            "row": name,
            "kind": kind,
            "cache": mode != "no cache",
            "batch": bs,
            "compile_s": compile_s,
            "median_s": med,
            "min_s": mn,
            "images_per_s": bs / med,
            "step_peak_mb": step_peak,
            "before_steps_mb": before,
            "xla_mb": xla,
            "times_s": ts,
        }
        if box["losses"]:
            row["loss_last"] = box["losses"][-1]
            if not np.isfinite(row["loss_last"]):
                notes.append(f"{name}: the loss became {row['loss_last']} (random inputs; timings still valid)")
        return row, box["state"]

    rows, opt_for = [], "flow"
    for name in wanted:
        kind = name.partition(" ")[0]
        if kind in stages and kind != opt_for:  # a fresh optimizer state when the stage changes, as the engine
            state = parallel.to_replicated(mesh, jax.jit(functools.partial(_init_opt, stages[kind], spe))(state))
            opt_for = kind
        row, state = run_row(name, state)
        rows.append(row)
        if not a._quiet:
            _print_row(row)
        jax.clear_caches()
    info = {
        "variant": a.config,
        "image_size": size,
        "train_batch": train_bs,
        "eval_batch": eval_bs,
        "arch": str(cfg.model.backbone.arch),
        "tap": tap,
        "random_backbone": bool(cfg.model.backbone.random_init),
        "feature_shape": list(feat_shape),
        "flow_blocks": int(cfg.model.flow.blocks),
        "flow_hidden": int(cfg.model.flow.hidden),
        "mapper": str(cfg.model.mapper),
        "bmr_width": int(cfg.model.bmr.width),
        "bmr_blocks": int(cfg.model.bmr.blocks),
        "extractor_params": n_params(ext.variables),
        "flow_params": n_flow,
        "mapping_params": n_map,
        "flow_epochs": int(cfg.train.flow_epochs),
        "mapping_epochs": int(cfg.train.mapping_epochs),
        "process_peak_mb": peak_mb(),
        "device": str(dev.device_kind),
        "platform": dev.platform,
        "devices": jax.device_count(),
        "jax": jax.__version__,
        "notes": notes,
        "extractor_note": ext.note,
    }
    return {"info": info, "rows": rows}


HEAD = (
    f"| {'row':24} | {'batch':>5} | {'compile s':>9} | {'median s':>9} | {'min s':>8} | {'img/s':>8} "
    f"| {'step MB':>8} | {'XLA MB':>8} |"
)


def _print_row(r: dict) -> None:
    print(
        f"| {r['row']:24} | {r['batch']:>5} | {r['compile_s']:>9.2f} | {r['median_s']:>9.4f} | {r['min_s']:>8.4f} "
        f"| {r['images_per_s']:>8.2f} | {r['step_peak_mb']:>8.0f} | {r['xla_mb']:>8.1f} |",
        flush=True,
    )


def _args_for_child(a: argparse.Namespace, row: str) -> list[str]:
    out = [f"--config={a.config}", f"--steps={a.steps}", f"--warmup={a.warmup}", f"--train-images={a.train_images}"]
    out += [f"--image-size={a.image_size}", f"--batch-size={a.batch_size}", f"--_row={row}"]
    return out + (["--random-backbone"] if a.random_backbone else [])


def _dur(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def summary(info: dict, rows: list[dict], train_images: int) -> None:
    by = {r["row"]: r for r in rows}
    for kind in ("flow", "mapping", "score"):
        c, u = by.get(f"{kind} cached"), by.get(f"{kind} no cache")
        if c and u:
            what = "inference batch" if kind == "score" else f"{kind} step"
            print(
                f"summary: {what} (batch {c['batch']}): {c['median_s']:.4f} s with the cache, "
                f"{u['median_s']:.4f} s without: the cache saves {u['median_s'] - c['median_s']:.4f} s "
                f"({u['median_s'] / c['median_s']:.2f}x faster)"
            )
    c, f = by.get("mapping cached"), by.get("mapping features-cached")
    if c and f:
        print(
            f"summary: mapping step (batch {c['batch']}): {c['median_s']:.4f} s on cached flow outputs, "
            f"{f['median_s']:.4f} s running the frozen flow every step ({f['median_s'] / c['median_s']:.2f}x)"
        )
    ext = by.get("extract")
    stage_rows = [(k, info[f"{k}_epochs"]) for k in ("flow", "mapping") if f"{k} cached" in by]
    if ext and stage_rows and all(f"{k} no cache" in by for k, _ in stage_rows):
        bs = info["train_batch"]
        spe = train_images // bs
        with_cache = train_images / ext["images_per_s"]  # one extraction pass of the training split
        without = 0.0
        for k, epochs in stage_rows:
            with_cache += epochs * spe * by[f"{k} cached"]["median_s"]
            without += epochs * spe * by[f"{k} no cache"]["median_s"]
        epochs = " + ".join(str(e) for _, e in stage_rows)
        print(
            f"summary: training estimate for {train_images} images ({spe} steps of {bs} per epoch, {epochs} epochs; "
            f"compilation and evaluation excluded): {_dur(with_cache)} with the cache (one extraction "
            f"pass included), {_dur(without)} without ({without / with_cache:.2f}x)"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="", choices=VARIANTS, help="configs/nfbmr.py variant")
    p.add_argument("--image-size", type=int, default=0, help="data.image_size (0: the variant's)")
    p.add_argument("--batch-size", type=int, default=0, help="every row's batch (0: train/eval batch of the variant)")
    p.add_argument("--steps", type=int, default=5, help="timed calls per row (the median is reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per row after compilation")
    p.add_argument(
        "--random-backbone",
        action="store_true",
        help="model.backbone.random_init=True: random backbone weights, no weights file (timings are the same)",
    )
    p.add_argument("--train-images", type=int, default=60, help="training-set size for the closing estimate")
    p.add_argument("--isolate", action="store_true", help="every row in a fresh subprocess (its own peak memory)")
    p.add_argument("--json", default="", help="also write the header and rows to this file")
    p.add_argument("--_row", default="", help=argparse.SUPPRESS)
    p.add_argument("--_quiet", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.steps < 1:
        p.error("--steps must be >= 1")
    if a._row:
        a._quiet = True
        print(json.dumps(measure(a, [a._row])))
        return

    print(
        f"# machine: {platform.node()}, CPU {cpu_model()} ({os.cpu_count()} logical CPUs), "
        f"python {platform.python_version()}; load average {os.getloadavg()}"
    )
    if not a.isolate:
        import jax

        d = jax.devices()[0]
        print(f"# device: {d.device_kind} (platform {d.platform}, {jax.device_count()} devices), jax {jax.__version__}")
    cfg, notes = build_config(a)
    print(
        f"# NF-BMR config {a.config or '(default)'!r}: {cfg.model.backbone.arch} {cfg.model.backbone.tap} at "
        f"{cfg.data.image_size}x{cfg.data.image_size}; flow {cfg.model.flow.blocks} blocks hidden "
        f"{cfg.model.flow.hidden}; mapper {cfg.model.mapper} (width {cfg.model.bmr.width}, n={cfg.model.bmr.blocks}); "
        f"train batch {cfg.train.batch_size}, eval batch {cfg.eval.batch_size}; {a.warmup} warm-up + {a.steps} "
        f"timed calls per row, {'one subprocess per row' if a.isolate else 'one process'}"
    )
    for n in notes:
        print(f"# note: {n}")
    print(
        "# rows: 'cached' = on precomputed extractor features (what the engine runs); 'no cache' = the extractor "
        "and then the step / score on every batch; 'step MB' = peak memory during the timed calls; 'XLA MB' = "
        "XLA's memory analysis of the row's executables"
    )
    print(HEAD)
    print("|" + "|".join("-" * (w + 2) for w in (24, 5, 9, 9, 8, 8, 8, 8)) + "|", flush=True)
    if a.isolate:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(d for d in (root, os.environ.get("PYTHONPATH")) if d))
        info, rows, peaks = None, [], []
        for name in row_names(a):
            out = subprocess.run(
                [sys.executable, __file__, *_args_for_child(a, name)], capture_output=True, text=True, env=env
            )
            if out.returncode:
                print(f"| {name:16} | FAILED: {out.stderr[-400:]!r}", flush=True)
                continue
            res = json.loads(out.stdout.strip().splitlines()[-1])
            info = info or res["info"]
            peaks.append(res["info"]["process_peak_mb"])
            for r in res["rows"]:
                r["process_peak_mb"] = res["info"]["process_peak_mb"]
                rows.append(r)
                _print_row(r)
        if info is None:
            sys.exit(1)
        info["process_peak_mb"] = max(peaks)
        print(f"# device: {info['device']} (platform {info['platform']}, {info['devices']} devices), jax {info['jax']}")
    else:
        from jaxflow_ad.backbones.weights import WeightsError

        try:
            res = measure(a, row_names(a))
        except WeightsError as e:
            sys.exit(f"no backbone weights: {e}\n(timings do not depend on them: pass --random-backbone)")
        info, rows = res["info"], res["rows"]
    print(
        f"# features {info['tap']} {info['feature_shape']}; parameters: "
        f"extractor {info['extractor_params'] / 1e6:.2f} M (frozen), flow {info['flow_params'] / 1e6:.2f} M, "
        f"mapping {info['mapping_params'] / 1e6:.2f} M"
    )
    print(f"# extractor: {info['extractor_note']}")
    for n in info["notes"]:
        if n not in notes:
            print(f"# note: {n}")
    mem = "peak RSS" if info["platform"] == "cpu" else "peak device memory"
    print(
        f"# memory: {mem} of the whole {'row processes (max)' if a.isolate else 'process'}, compiler included: "
        f"{info['process_peak_mb']:.0f} MB"
        + ("" if a.isolate or info["platform"] == "cpu" else " (step MB on GPU is cumulative without --isolate)")
    )
    summary(info, rows, a.train_images)
    print(f"# load average at the end {os.getloadavg()}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"info": info, "rows": rows, "cpu": cpu_model(), "node": platform.node()}, f, indent=2)


if __name__ == "__main__":
    main()
