"""Anatomy of PyramidFlow's seed dependence: which source, which epochs, which levels, which statistics.

The seed study (``pyramidflow_seed_study.py``) measures the spread; this script takes it apart on the
quick-start setting (``configs/pyramidflow.py``), one process, one device:

* **Source.** The seed draws the initial weights *and* the data stream (batch order, flips/rot90).
  Runs are keyed by ``(init seed, data seed)``: the diagonal ``(s, s)`` is what ``--config.seed=s``
  trains; ``(s, 0)`` varies only the initialisation and ``(0, s)`` only the data stream.
* **Epochs.** The diagonal runs are scored after every epoch (template refitted each time).
* **Levels.** The anomaly map is a sum over pyramid levels (Eq. 10); each level's map is scored alone.
* **Statistics.** At the end every run is scored four ways, with the same trained weights:
  ``default`` (running means of volume normalization from training, momentum 0.1, i.e. an average over
  the last ~10 batches; template over the plain training images), ``precise_rm`` (running means
  re-estimated as the average batch mean over a whole pass of the training set, weights fixed,
  "precise BatchNorm"), ``views_template`` (template over the 8 dihedral views of each training image:
  the distribution the flow was trained on, textures only) and both together.

    .venv/bin/python benchmarks/pyramidflow_seed_anatomy.py --categories weave --seeds 0,1,2,3,4 \
        --factors --out /tmp/anatomy.json
    .venv/bin/python benchmarks/pyramidflow_seed_anatomy.py --summarize /tmp/anatomy.json

The remedies and lengths in the README's table (``--no-variants`` scores only the default way,
``--no-epochs`` only at the end; ``--config.*`` overrides after ``--``)::

    .venv/bin/python benchmarks/pyramidflow_seed_anatomy.py --categories weave --no-variants \
        --out /tmp/anneal2.json -- --config.train.optimizer.anneal_epochs=2
    .venv/bin/python benchmarks/pyramidflow_seed_anatomy.py --categories weave --no-variants \
        --out /tmp/e12.json -- --config.train.epochs=12
    .venv/bin/python benchmarks/pyramidflow_seed_anatomy.py --categories weave --no-variants --no-epochs \
        --out /tmp/e12_anneal4.json -- --config.train.epochs=12 --config.train.optimizer.anneal_epochs=4

Measured on a 2-core CPU: about 75 s of training per 6-epoch run, 2-4 min per run with the
scoring after every epoch and the four variants.

Extra ``--config.*`` overrides (a training remedy under study) go after ``--``.
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from configs import pyramidflow as pf_config  # noqa: E402
from jaxflow_ad import data, metrics, models  # noqa: E402
from jaxflow_ad.engine import loop  # noqa: E402
from jaxflow_ad.flows import pyramid as pyr  # noqa: E402
from jaxflow_ad.flows.volume_norm import COLLECTION  # noqa: E402
from jaxflow_ad.models.base import eval_params  # noqa: E402

VARIANTS = ("default", "precise_rm", "views_template", "precise_rm+views_template")


def dihedral_views(images: np.ndarray) -> list[np.ndarray]:
    """The 8 flips/quarter turns of NHWC images (the views ``flip_rot90`` draws from)."""
    out = []
    for flip in (False, True):
        x = images[:, :, ::-1] if flip else images
        out += [np.ascontiguousarray(np.rot90(x, k, axes=(1, 2))) for k in range(4)]
    return out


def _batches(images: np.ndarray, bs: int):
    for i in range(0, len(images) - bs + 1, bs):  # whole batches only: the batch mean is a batch-of-bs statistic
        yield images[i : i + bs]


def precise_running_means(method, state, image_sets: list[np.ndarray], bs: int):
    """Volume-norm running means as the average training-mode batch mean over whole passes of
    ``image_sets`` (weights fixed), instead of the momentum-0.1 average of the last training batches."""
    net = method.net
    momentum = 0.1

    def zero_rm(tree):
        return jax.tree_util.tree_map_with_path(
            lambda p, v: jnp.zeros_like(v) if any(getattr(k, "key", None) == COLLECTION for k in p) else v, tree
        )

    ms0 = dict(state.model_state, blocks=zero_rm(state.model_state["blocks"]))
    total, count = None, 0
    for images in image_sets:
        for b in _batches(images, bs):
            rm = _batch_rm(net, method, eval_params(state), ms0, b)
            total = rm if total is None else jax.tree_util.tree_map(jnp.add, total, rm)
            count += 1

    def average(p, v, t):
        return t / (momentum * count) if any(getattr(k, "key", None) == COLLECTION for k in p) else v

    blocks = jax.tree_util.tree_map_with_path(average, state.model_state["blocks"], total)
    return state.replace(model_state=dict(state.model_state, blocks=blocks))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _batch_rm(net, method, params, ms0, x):
    _, _, new = net.forward(params, ms0, method.inputs({"image": x}), train=True)
    return new["blocks"]


@functools.partial(jax.jit, static_argnums=0)
def _latents(method, state, x):
    return method.latents(state, {"image": x})


def score(method, state, test, per_level: bool) -> dict:
    """Metrics of the test split (and of each pyramid level's map alone)."""
    template = state.stats["template"]
    up = method.net.pyramid_up
    maps, level_maps = [], []
    for i in range(0, len(test), 8):
        z = _latents(method, state, test.images[i : i + 8])
        d = [jnp.abs(a - t) for a, t in zip(z, template)]
        maps.append(np.asarray(jnp.mean(pyr.compose(d, up), axis=-1)))
        if per_level:
            alone = [[x if j == k else jnp.zeros_like(x) for j, x in enumerate(d)] for k in range(len(d))]
            level_maps.append([np.asarray(jnp.mean(pyr.compose(a, up), -1)) for a in alone])
    amap = np.concatenate(maps)
    s = amap.reshape(len(amap), -1).max(1)
    res = metrics.evaluate(test.labels, s, test.masks, amap)
    res = {k: res[k] for k in ("image_auroc", "pixel_auroc", "aupro")}
    res["per_defect"] = metrics.evaluate_by_defect(test.labels, s, test.masks, amap, test.defect_types)
    if per_level:
        res["levels"] = []
        for k in range(len(level_maps[0])):
            lm = np.concatenate([b[k] for b in level_maps])
            r = metrics.evaluate(test.labels, lm.reshape(len(lm), -1).max(1), test.masks, lm)
            res["levels"].append({m: r[m] for m in ("image_auroc", "pixel_auroc", "aupro")})
    return res


def run(cfg, category: str, pairs: list[tuple[int, int]], per_epoch: set[tuple[int, int]], save, variants=True) -> None:
    """Train and score each ``(init seed, data seed)`` pair; ``save(key, result)`` after each."""
    cfg = models.configure(cfg, category)
    method = models.build(cfg)
    root = data.ensure_builtin()
    size = int(cfg.data.image_size)
    train = data.load_split(root, category, "train", size, resize=cfg.data.resize)
    test = data.load_split(root, category, "test", size, resize=cfg.data.resize)
    (plan,) = loop.plan_stages(method, cfg, len(train), category)
    stage, bs, spe = plan.stage, plan.batch_size, plan.steps_per_epoch
    step_fn = jax.jit(stage.train_step(spe))
    textures = data.is_texture(category)
    views = dihedral_views(train.images) if textures else [train.images]

    def plain_template(state):
        return method.statistics_from(state, ({"image": b} for b in np.array_split(train.images, -(-len(train) // 8))))

    def views_template(state):
        return method.statistics_from(state, ({"image": b} for v in views for b in np.array_split(v, -(-len(v) // 8))))

    for init_seed, data_seed in pairs:
        t0 = time.perf_counter()
        state = method.init(jax.random.PRNGKey(init_seed), loop.example_batch(method, train))
        state = stage.init_opt(state, spe)
        key = jax.random.PRNGKey(data_seed)
        epochs = {}
        n = len(train)
        for epoch in range(stage.epochs):
            order = np.random.default_rng([data_seed, 0, epoch]).permutation(n)
            for i in range(spe):
                step = epoch * spe + i
                rng = np.random.default_rng([data_seed, 0, step])
                batch = stage.prepare_batch(train.take(order[i * bs : (i + 1) * bs]), rng)
                state, m = step_fn(state, batch, jax.random.fold_in(key, step))
            if (init_seed, data_seed) in per_epoch and epoch + 1 < stage.epochs:
                epochs[epoch + 1] = score(method, plain_template(state), test, per_level=False)
        train_s = time.perf_counter() - t0
        res = {"train_s": train_s, "final_loss": float(m["loss"])}
        res["default"] = score(method, plain_template(state), test, per_level=True)
        epochs[stage.epochs] = res["default"]
        if len(epochs) > 1:
            res["epochs"] = epochs
        if not variants:
            save(f"{init_seed},{data_seed}", res)
            continue
        precise = precise_running_means(method, state, views, bs)
        res["precise_rm"] = score(method, plain_template(precise), test, per_level=True)
        if textures:
            res["views_template"] = score(method, views_template(state), test, per_level=True)
            res["precise_rm+views_template"] = score(method, views_template(precise), test, per_level=True)
        save(f"{init_seed},{data_seed}", res)
        d = res["default"]
        print(
            f"{category} init {init_seed} data {data_seed}: {train_s:.0f} s, P-AUROC {d['pixel_auroc']:.4f} "
            f"AUPRO {d['aupro']:.4f} I-AUROC {d['image_auroc']:.4f}; precise_rm P-AUROC "
            f"{res['precise_rm']['pixel_auroc']:.4f}",
            flush=True,
        )


def _sd(v):
    return float(np.std(v, ddof=1)) if len(v) > 1 else 0.0


def _cell(vals) -> str:
    return f"{100 * np.mean(vals):.1f} +- {100 * _sd(vals):.1f}"


def summarize(study: dict) -> str:
    lines = []
    for cat, runs in study.items():
        diag = [k for k in runs if k.split(",")[0] == k.split(",")[1]]
        init_only = sorted({k for k in runs if k.split(",")[1] == "0"})
        data_only = sorted({k for k in runs if k.split(",")[0] == "0"})
        first = runs[diag[0]]
        kinds = sorted(first["default"]["per_defect"])
        lines.append(f"\n## {cat}\n")
        lines.append("### Source of the spread (default scoring, mean +- sd)\n")
        kind_cols = " | ".join(f"{k} AUPRO" for k in kinds)
        lines.append(f"| runs | n | image AUROC | pixel AUROC | AUPRO | {kind_cols} |")
        lines.append("|" + "---|" * (5 + len(kinds)))
        for name, keys in (("seed (init and data)", diag), ("init only", init_only), ("data only", data_only)):
            if len(keys) < 2:
                continue
            rows = [runs[k]["default"] for k in keys]
            cells = [_cell([r[m] for r in rows]) for m in ("image_auroc", "pixel_auroc", "aupro")]
            cells += [_cell([r["per_defect"][k]["aupro"] for r in rows]) for k in kinds]
            lines.append(f"| {name} | {len(keys)} | " + " | ".join(cells) + " |")
        lines.append("\n### Scoring variants on the same weights (seed runs)\n")
        lines.append(f"| variant | image AUROC | pixel AUROC | AUPRO | {kind_cols} |")
        lines.append("|" + "---|" * (4 + len(kinds)))
        for v in VARIANTS:
            rows = [runs[k][v] for k in diag if v in runs[k]]
            if not rows:
                continue
            cells = [_cell([r[m] for r in rows]) for m in ("image_auroc", "pixel_auroc", "aupro")]
            cells += [_cell([r["per_defect"][k]["aupro"] for r in rows]) for k in kinds]
            lines.append(f"| {v} | " + " | ".join(cells) + " |")
        lines.append("\n### Per epoch (seed runs, default scoring)\n")
        epochs = sorted({int(e) for k in diag for e in runs[k].get("epochs", {})})
        if epochs:
            lines.append("| epoch | pixel AUROC | AUPRO | per seed pixel AUROC |")
            lines.append("|---|---|---|---|")
            for e in epochs:
                rows = [runs[k]["epochs"][str(e)] for k in diag]
                per = " / ".join(f"{100 * r['pixel_auroc']:.1f}" for r in rows)
                pa, au = _cell([r["pixel_auroc"] for r in rows]), _cell([r["aupro"] for r in rows])
                lines.append(f"| {e} | {pa} | {au} | {per} |")
        lines.append("\n### Per pyramid level alone (seed runs, default scoring; level 0 = finest)\n")
        n_levels = len(first["default"]["levels"])
        lines.append("| level | pixel AUROC | AUPRO |")
        lines.append("|---|---|---|")
        for lv in range(n_levels):
            rows = [runs[k]["default"]["levels"][lv] for k in diag]
            lines.append(f"| {lv} | {_cell([r['pixel_auroc'] for r in rows])} | {_cell([r['aupro'] for r in rows])} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--categories", default="weave")
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--factors", action="store_true", help="also (s, 0) and (0, s) runs: init only, data only")
    p.add_argument("--no-epochs", action="store_true", help="score the seed runs only at the end")
    p.add_argument("--no-variants", action="store_true", help="only the default scoring (faster)")
    p.add_argument("--out", default="/tmp/pyramidflow_anatomy.json")
    p.add_argument("--summarize", default="", help="print the tables of an existing --out file and exit")
    a, overrides = p.parse_known_args()
    if a.summarize:
        print(summarize(json.loads(pathlib.Path(a.summarize).read_text())))
        return
    cfg = pf_config.get_config()
    for o in overrides:
        if o == "--":
            continue
        k, v = o.removeprefix("--config.").split("=", 1)
        *path, leaf = k.split(".")
        node = cfg
        for part in path:
            node = node[part]
        node[leaf] = type(node[leaf])(v) if not isinstance(node[leaf], bool) else v.lower() in ("1", "true")
    seeds = [int(s) for s in a.seeds.split(",")]
    pairs = [(s, s) for s in seeds]
    if a.factors:
        pairs += [(s, 0) for s in seeds if s] + [(0, s) for s in seeds if s]
    per_epoch = set() if a.no_epochs else {(s, s) for s in seeds}
    out_path = pathlib.Path(a.out)
    study = json.loads(out_path.read_text()) if out_path.exists() else {}
    for cat in a.categories.split(","):
        done = study.setdefault(cat, {})

        def save(key, res, done=done):  # after every run: an interrupted study keeps what it measured
            done[key] = res
            out_path.write_text(json.dumps(study, indent=1))

        run(cfg, cat, [pr for pr in pairs if f"{pr[0]},{pr[1]}" not in done], per_epoch, save, not a.no_variants)
    print(summarize(study))


if __name__ == "__main__":
    main()
