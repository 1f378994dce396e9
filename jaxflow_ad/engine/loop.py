"""The experiment: for each category, train (resumably), fit statistics, evaluate, report.

``run(config, workdir, mode)`` is the whole command line. Layout of ``workdir``::

    config.json                 the resolved config
    log.jsonl                   every logged scalar (JSON lines)
    tb/<category>/              TensorBoard event files
    <category>/checkpoints/     orbax checkpoints (resume from the latest)
    <category>/metrics.json     that category's metrics, timings
    <category>/heatmaps/*.png   image | ground truth | anomaly map | overlay
    <category>/<artifact>.png   e.g. PyramidFlow's image template
    metrics.json, results.md    all categories and their mean

Determinism: the data order of epoch ``e`` of stage ``k`` is a permutation
drawn from ``np.random.default_rng([seed, k, e])`` and the augmentation of
step ``s`` from ``default_rng([seed, k, s])``, so a run resumed from a
checkpoint sees exactly the batches an uninterrupted run sees.
"""

from __future__ import annotations

import json
import logging
import pathlib
import sys
import time

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from jaxflow_ad import data as data_lib
from jaxflow_ad import metrics as metrics_lib
from jaxflow_ad import models
from jaxflow_ad.engine import parallel, report
from jaxflow_ad.engine.checkpoint import Checkpointer
from jaxflow_ad.engine.writers import ScalarWriter

log = logging.getLogger("jaxflow_ad")
MODES = ("train", "eval", "all")
_BAR_INTERVAL = 0.1 if sys.stderr.isatty() else 30.0  # a log file gets a line every 30 s


def _is_main() -> bool:
    return jax.process_index() == 0


def resolve_data(config: ml_collections.ConfigDict) -> tuple[pathlib.Path, list[str]]:
    """The dataset root (the built-in set when ``data.root`` is empty) and the categories to run."""
    if config.data.root:
        root = pathlib.Path(config.data.root).expanduser()
        available = data_lib.list_categories(root)  # raises DatasetError naming the root
    else:
        root = data_lib.ensure_builtin()
        available = list(data_lib.BUILTIN_CATEGORIES)
    wanted = [c.strip() for c in str(config.data.categories).split(",") if c.strip()]
    if not wanted:
        return root, available
    missing = [c for c in wanted if c not in available]
    if missing:
        raise data_lib.DatasetError(
            f"config key data.categories names {missing}, not found under {root}; available: {available}"
        )
    return root, wanted


def _augment_on(config, category: str) -> bool:
    mode = config.data.augment
    if mode == "auto":
        return data_lib.is_texture(category)
    if mode in ("none", "flip_rot90"):
        return mode == "flip_rot90"
    raise ValueError(f"config key data.augment={mode!r}: use 'auto', 'none' or 'flip_rot90'")


class _Timer:
    """Training wall time, accumulated across resumed runs in ``train_time.json``."""

    def __init__(self, path: pathlib.Path):
        self.path = path
        self.before = json.loads(path.read_text())["seconds"] if path.exists() else 0.0
        self.t0 = time.perf_counter()

    @property
    def total(self) -> float:
        return self.before + time.perf_counter() - self.t0

    def save(self) -> None:
        if _is_main():
            self.path.write_text(json.dumps({"seconds": self.total}))


def _batches(images: np.ndarray, batch_size: int):
    for i in range(0, len(images), batch_size):
        yield images[i : i + batch_size]


def train_category(
    method,
    config,
    train: data_lib.Split,
    category: str,
    cat_dir: pathlib.Path,
    mesh,
    ckpt: Checkpointer,
    writer: ScalarWriter,
    state,
):
    """Run every stage from the latest checkpoint on; returns the trained state."""
    bs = int(config.train.batch_size)
    parallel.check_batch_size(bs, "train.batch_size")
    n = len(train)
    spe = n // bs
    if spe == 0:
        raise ValueError(f"train.batch_size={bs} is larger than the {n} training images of {category}; lower it")
    bounds, begin = [], 0
    for stage in method.stages:
        bounds.append((begin, begin + stage.epochs * spe))
        begin += stage.epochs * spe
    start = ckpt.latest_step() or 0
    if start:
        k = next(i for i, (b, e) in enumerate(bounds) if start <= e)
        state = parallel.to_replicated(mesh, ckpt.restore(method.stages[k].init_opt(state), start))
        log.info("%s: resumed from step %d (%s)", category, start, ckpt.directory)
    augment = _augment_on(config, category)
    timer = _Timer(cat_dir / "train_time.json")
    key = jax.random.PRNGKey(config.seed)
    for k, (stage, (b, e)) in enumerate(zip(method.stages, bounds)):
        if start >= e:
            continue
        if start == b:
            state = parallel.to_replicated(mesh, stage.init_opt(state))
        step_fn = parallel.jit_train_step(mesh, stage.train_step)
        bar = tqdm(
            total=e - b,
            initial=start - b,
            desc=f"{category} {stage.name}",
            disable=not _is_main(),
            dynamic_ncols=True,
            leave=False,
            mininterval=_BAR_INTERVAL,
        )
        for step in range(start, e):
            epoch, i = divmod(step - b, spe)
            order = np.random.default_rng([config.seed, k, epoch]).permutation(n)
            images = train.images[order[i * bs : (i + 1) * bs]]
            rng = np.random.default_rng([config.seed, k, step])
            if augment:
                images = data_lib.flip_rot90(images, rng)
            batch = parallel.global_batch(mesh, stage.prepare_batch(images, rng))
            state, m = step_fn(state, batch, jax.random.fold_in(key, step))
            m = {name: float(v) for name, v in m.items()}  # waits for the step: also avoids the
            bar.set_postfix(loss=f"{m['loss']:.4g}", refresh=False)  # 2-core collective deadlock (environment.md)
            bar.update(1)
            if not np.isfinite(m["loss"]):
                raise FloatingPointError(
                    f"{category}: loss is {m['loss']} at step {step}; lower train.optimizer.lr or check the data"
                )
            if (step + 1) % config.train.log_every_steps == 0 or step + 1 == e:
                writer.write(step + 1, {f"train/{stage.name}/{name}": v for name, v in m.items()})
            if (step + 1) % config.train.checkpoint_every_steps == 0 or step + 1 == e:
                ckpt.save(step + 1, state, force=True)
                timer.save()
        bar.close()
        start = e
    ckpt.wait()
    timer.save()
    return state, timer.total


def evaluate_category(method, config, state, test: data_lib.Split, mesh) -> tuple[dict, np.ndarray, np.ndarray]:
    """Anomaly maps and scores of the test split; metrics; inference throughput (compile excluded)."""
    bs = int(config.eval.batch_size)
    parallel.check_batch_size(bs, "eval.batch_size")
    score = parallel.jit_score(mesh, method.score)
    maps, scores = [], []
    n = len(test)
    pad = (-n) % bs
    images = np.concatenate([test.images, np.repeat(test.images[-1:], pad, axis=0)]) if pad else test.images
    jax.block_until_ready(score(state, parallel.global_batch(mesh, {"x": images[:bs]})["x"]))  # compile
    t0 = time.perf_counter()
    for chunk in tqdm(
        list(_batches(images, bs)), desc="evaluate", disable=not _is_main(), leave=False, mininterval=_BAR_INTERVAL
    ):
        m, s = score(state, parallel.global_batch(mesh, {"x": chunk})["x"])
        maps.append(np.asarray(jax.device_get(m)))
        scores.append(np.asarray(jax.device_get(s)))
    seconds = time.perf_counter() - t0
    maps, scores = np.concatenate(maps)[:n], np.concatenate(scores)[:n]
    res = config.eval.resolution
    res = res if res == "native" else int(res)
    result = metrics_lib.evaluate(
        test.labels, scores, test.masks, maps, fpr_limit=config.eval.fpr_limit, resolution=res
    )
    result["images_per_s"] = len(images) / seconds
    return result, maps, scores


def run_category(config, workdir: pathlib.Path, root: pathlib.Path, category: str, mode: str) -> dict:
    cfg = models.configure(config, category)
    cat_dir = workdir / category
    cat_dir.mkdir(parents=True, exist_ok=True)
    size = int(cfg.data.image_size)
    train = data_lib.load_split(root, category, "train", size)
    with cfg.unlocked():
        cfg.train.steps_per_epoch = len(train) // int(cfg.train.batch_size)
    method = models.build(cfg)
    notes = list(getattr(method, "notes", []))  # e.g. which backbone weights stand in
    for note in notes:
        log.warning("%s: %s", category, note)
    mesh = parallel.make_mesh()
    state = parallel.to_replicated(mesh, method.init(jax.random.PRNGKey(cfg.seed), (size, size, 3)))
    ckpt = Checkpointer(cat_dir / "checkpoints")
    writer = ScalarWriter(workdir, category)
    try:
        if mode in ("train", "all"):
            state, train_time = train_category(method, cfg, train, category, cat_dir, mesh, ckpt, writer, state)
        else:
            if ckpt.latest_step() is None:
                raise FileNotFoundError(f"no checkpoint in {ckpt.directory}: run with --mode=train or --mode=all first")
            k = len(method.stages) - 1
            state = parallel.to_replicated(mesh, ckpt.restore(method.stages[k].init_opt(state)))
            t = cat_dir / "train_time.json"
            train_time = json.loads(t.read_text())["seconds"] if t.exists() else float("nan")
        if mode == "train":
            return {"train_time_s": train_time}
        state = method.fit_statistics(state, _batches(train.images, int(cfg.eval.batch_size)))
        test = data_lib.load_split(root, category, "test", size)
        result, maps, _ = evaluate_category(method, cfg, state, test, mesh)
        result["train_time_s"] = train_time
        writer.write(int(jax.device_get(state.step)), {f"eval/{k}": v for k, v in result.items()})
        if _is_main():
            report.write_heatmaps(
                cat_dir / "heatmaps",
                test.images,
                test.masks,
                maps,
                test.defect_types,
                test.paths,
                int(cfg.eval.num_heatmaps),
            )
            for name, img in method.artifacts(state).items():
                report.save_image(cat_dir / f"{name}.png", img)
            (cat_dir / "metrics.json").write_text(json.dumps({**result, "notes": notes}, indent=2, sort_keys=True))
        return result
    finally:
        writer.close()
        ckpt.close()


def run(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, mode: str = "all") -> dict:
    """Train and/or evaluate every configured category; returns ``{category: metrics}``."""
    if mode not in MODES:
        raise ValueError(f"--mode={mode!r}: use one of {MODES}")
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    models.check_config(config)
    root, categories = resolve_data(config)
    if _is_main():
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
        log.info(
            "data: %s, categories: %s, devices: %d (%s), processes: %d",
            root,
            categories,
            jax.device_count(),
            jax.devices()[0].platform,
            jax.process_count(),
        )
    results = {}
    for category in categories:
        results[category] = run_category(config, workdir, root, category, mode)
        if _is_main():
            log.info("%s: %s", category, json.dumps({k: round(v, 4) for k, v in results[category].items()}))
    if _is_main() and mode != "train":
        table = report.write_summary(workdir, results, config.to_json_best_effort())
        print("\n" + table, flush=True)
    return results
