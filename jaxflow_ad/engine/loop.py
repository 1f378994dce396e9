"""The experiment: for each category, train (resumably), fit statistics, evaluate, report.

``run(config, workdir, mode)`` is the whole command line. It talks to methods
only through the contract of :mod:`jaxflow_ad.models.base` (samples, a frozen
extractor, stages, statistics, ``score``) and to data only through the reader
that ``data.layout`` names. Layout of ``workdir``::

    config.json                 the resolved config
    log.jsonl                   every logged scalar (JSON lines)
    tb/<category>/              TensorBoard event files
    <category>/checkpoints/     orbax checkpoints: state and fitted statistics (resume from the latest)
    <category>/features/        cached features of a frozen extractor, when larger than
                                data.feature_cache_memory_mb (reused by a resumed run)
    <category>/metrics.json     that category's metrics, timings
    <category>/threshold.json   the decision threshold: set by hand, F1-optimal on a labelled
                                validation split, or a quantile of held-out normal images
    <category>/heatmaps/*.png   image | ground truth | anomaly map | overlay
    <category>/<artifact>.png   e.g. PyramidFlow's image template
    metrics.json, results.md    all categories and their mean

Determinism: the data order of epoch ``e`` of stage ``k`` is a permutation
drawn from ``np.random.default_rng([seed, k, e])``, the host-side batch
preparation of global step ``s`` gets ``default_rng([seed, k, s])``, the
step's JAX key is ``fold_in(PRNGKey(seed), s)`` and scoring batch ``j`` gets
``fold_in(fold_in(PRNGKey(seed), 1), j)``, so a run resumed from a checkpoint
(statistics included) sees exactly the batches and keys an uninterrupted run
sees.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import pathlib
import queue
import sys
import threading
import time

import jax
import ml_collections
import numpy as np
from PIL import Image
from tqdm import tqdm

from jaxflow_ad import data as data_lib
from jaxflow_ad import metrics as metrics_lib
from jaxflow_ad import models
from jaxflow_ad.engine import parallel, report
from jaxflow_ad.engine import workdir as workdir_lib
from jaxflow_ad.engine.checkpoint import Checkpointer, model_signature
from jaxflow_ad.engine.features import FeatureCache
from jaxflow_ad.engine.timing import CompileCache, Timings, enable_persistent_cache, method_key, time_table
from jaxflow_ad.engine.writers import ScalarWriter
from jaxflow_ad.errors import CheckpointError, ConfigError, TrainingDiverged
from jaxflow_ad.models import base

log = logging.getLogger("jaxflow_ad")
MODES = ("train", "eval", "all", "predict", "export")
_BAR_INTERVAL = 0.1 if sys.stderr.isatty() else 30.0  # a log file gets a line every 30 s


def _is_main() -> bool:
    return jax.process_index() == 0


def resolve_data(config: ml_collections.ConfigDict) -> tuple[pathlib.Path, list[str]]:
    """The dataset root (the built-in set when ``data.root`` is empty) and the categories to run."""
    if config.data.root:
        root = pathlib.Path(config.data.root).expanduser()
        # DatasetError naming the root
        available = data_reader(config).list_categories(root, **reader_options(config))
    elif config.data.layout in ("mvtec3d", "eyecandies"):  # RGB + point clouds: the built-in multimodal set
        if config.data.layout != "mvtec3d":
            raise ConfigError(
                f"data.layout={config.data.layout!r} with an empty data.root: the built-in multimodal set is "
                "stored as MVTec 3D-AD; set data.layout=mvtec3d, or data.root to your dataset"
            )
        root = data_lib.ensure_builtin3d()
        available = list(data_lib.BUILTIN3D_CATEGORIES)
    else:
        root = data_lib.ensure_builtin()
        available = list(data_lib.BUILTIN_CATEGORIES)
    wanted = [c.strip() for c in str(config.data.categories).split(",") if c.strip()]
    if not available:
        raise data_lib.DatasetError(_no_categories(root, config.data.layout))
    if not wanted:
        return root, available
    missing = [c for c in wanted if c not in available]
    if missing:
        raise data_lib.DatasetError(
            f"config key data.categories names {missing}, not found under {root}; available: {available}"
        )
    return root, wanted


SOURCES = ("files", "tfds")


def data_reader(config) -> data_lib.Reader:
    """The reader of ``data.layout``: from the files under ``data.root`` (``data.source=files``), or from
    the tensorflow-datasets ArrayRecord copy under ``data.tfds_dir`` (``data.source=tfds``;
    :func:`jaxflow_ad.data.tfds_source.tfds_reader`: prepared from ``data.root`` on first use, then
    read without it, giving the same splits)."""
    source = str(config.data.get("source", "files") or "files")
    if source not in SOURCES:
        raise ConfigError(f"config key data.source={source!r}: use one of {SOURCES}")
    if source == "tfds":
        from jaxflow_ad.data import tfds_source

        tfds_dir = str(config.data.get("tfds_dir", "") or "~/tensorflow_datasets")
        return tfds_source.tfds_reader(config.data.layout, pathlib.Path(tfds_dir).expanduser())
    return data_lib.get_reader(config.data.layout)


def reader_options(config) -> dict:
    """``config.data.<layout>`` as keyword options of the layout's reader (e.g. ``data.folder``:
    ``normal_dir``, ``abnormal_dir``, ``mask_dir``); ``{}`` for a layout without options."""
    reader = data_lib.get_reader(config.data.layout)
    if not reader.options:
        return {}
    given = config.data.get(reader.name, None)
    opts = dict(given.to_dict() if hasattr(given, "to_dict") else (given or {}))
    unknown = sorted(set(opts) - set(reader.options))
    if unknown:
        raise ConfigError(
            f"config keys {[f'data.{reader.name}.{k}' for k in unknown]} are not options of "
            f"the {reader.name!r} layout; use {list(reader.options)}"
        )
    return opts


def _no_categories(root: pathlib.Path, layout: str) -> str:
    """The message for a root with no category of ``layout``, with where the categories are if the root
    is one level too high or too deep."""
    reader = data_lib.get_reader(layout)

    def cats(path):
        try:
            return reader.list_categories(path)
        except data_lib.DatasetError:
            return []

    hint = ""
    deeper = [p for p in sorted(root.iterdir()) if p.is_dir() and cats(p)]
    if deeper:
        hint = f" The categories are one level deeper: use --config.data.root={deeper[0]}"
    elif cats(root.parent):
        hint = f" {root.name} itself looks like a category: use --config.data.root={root.parent}"
    return (
        f"config key data.root={root} holds no category in the {layout!r} layout (data.layout); expected one "
        f"sub-folder per category.{hint}"
    )


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
            report.write_text_atomic(self.path, json.dumps({"seconds": self.total}))  # a kill mid-write
            # must not leave a truncated file that stops the resumed run


@dataclasses.dataclass(frozen=True)
class StagePlan:
    """Where a stage sits on the global step axis: steps ``[begin, end)``."""

    index: int
    stage: base.Stage
    batch_size: int
    steps_per_epoch: int
    begin: int
    end: int


def plan_stages(method, config, num_train: int, category: str) -> list[StagePlan]:
    """Batch size, steps per epoch and global step range of every stage (nothing written to the config)."""
    plans, begin = [], 0
    for k, stage in enumerate(method.stages):
        bs = int(stage.batch_size or config.train.batch_size)
        key = "train.batch_size" if stage.batch_size is None else f"the batch size of stage {stage.name!r}"
        parallel.check_batch_size(bs, key)
        spe = num_train // bs
        if spe == 0:
            raise ConfigError(f"{key}={bs} is larger than the {num_train} training images of {category}; lower it")
        if num_train % bs:
            log.warning(
                "%s: stage %s uses %d of the %d training images per epoch (%s=%d does not divide it); the %d left "
                "out change every epoch (the order is reshuffled)",
                category,
                stage.name,
                spe * bs,
                num_train,
                key,
                bs,
                num_train % bs,
            )
        plans.append(StagePlan(k, stage, bs, spe, begin, begin + stage.epochs * spe))
        begin += stage.epochs * spe
    return plans


@dataclasses.dataclass
class RunContext:
    """What the categories of one run share: compiled executables (:class:`CompileCache`), the
    category's :class:`Timings`, ``key`` identifying the method's computation (:func:`method_key`),
    and ``stop``: set when a concurrent category failed or the run was interrupted, so that training
    stops at its next step with a checkpoint saved."""

    compiled: CompileCache
    timings: Timings
    key: str
    stop: threading.Event | None = None


class Stopped(Exception):
    """A category's training stopped early (``RunContext.stop``) after saving a checkpoint at ``step``."""

    def __init__(self, category: str, step: int):
        super().__init__(f"{category}: stopped at step {step} (checkpoint saved; a rerun resumes it)")
        self.category, self.step = category, step


class _Fn:
    """``make()`` (a jitted function) compiled ahead of time on its first call through the run's
    :class:`CompileCache` (shared across categories, timed as ``compile``); without a context, the
    jitted function itself."""

    def __init__(self, ctx: RunContext | None, name: str, make):
        self.ctx, self.name, self.make = ctx, name, make
        self.jitted = make() if ctx is None else None
        self.exes: dict = {}  # argument tree structure -> executable (a state gains statistics, say)

    def compile_ahead(self, *args) -> None:
        """Compile for arguments shaped like ``args`` in a background thread, so that the host
        compiles while the device trains; a call before it is done waits for it (and counts the
        wait as ``compile``). A failure here is left for that call to meet and report."""
        if self.jitted is not None:
            return
        shapes = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), args)
        key = f"{self.ctx.key}|{self.name}"

        def work():
            try:
                self.ctx.compiled.get(key, self.make, shapes)
            except Exception as e:  # noqa: BLE001 (the foreground call compiles again and raises)
                log.debug("compiling %s ahead failed: %s", self.name, e)

        threading.Thread(target=work, daemon=True, name="jaxflow_ad-compile-ahead").start()

    def __call__(self, *args):
        if self.jitted is not None:
            return self.jitted(*args)
        tree = jax.tree_util.tree_structure(args)
        exe = self.exes.get(tree)
        if exe is None:
            key = f"{self.ctx.key}|{self.name}"
            exe = self.exes[tree] = self.ctx.compiled.get(key, self.make, args, self.ctx.timings)
        return exe(*args)


def _phase(ctx: RunContext | None, name: str):
    return ctx.timings.phase(name) if ctx is not None else contextlib.nullcontext()


class _Prefetch:
    """The prepared, sharded batches of ``items`` produced by a background thread, at most ``depth``
    ahead (host work overlapped with the device's step). Order and content are those of the
    generator; an exception in it is raised here, at the batch it concerns."""

    _END = object()

    def __init__(self, items, depth: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(items,), daemon=True, name="jaxflow_ad-prefetch")
        self._thread.start()

    def _run(self, items):
        try:
            for item in items:
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            self._queue.put(self._END)
        except BaseException as e:  # noqa: BLE001 (handed to the consumer)
            self._queue.put(e)

    def __iter__(self):
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self):
        self._stop.set()
        self._thread.join(timeout=5)


def _padded_batches(split: data_lib.Split, batch_size: int):
    """``(rows, batch)`` over ``split`` in order, each batch padded to ``batch_size`` rows."""
    for i in range(0, len(split), batch_size):
        rows = np.arange(i, min(i + batch_size, len(split)))
        yield rows, parallel.pad_rows(split.take(rows), batch_size)


def _per_sample(fn, state, split: data_lib.Split, mesh, batch_size: int):
    """``fn(state, batch)`` jitted over ``split`` in order, through the mesh: one host pytree per batch,
    padding rows removed."""
    for rows, batch in _padded_batches(split, batch_size):
        host = jax.device_get(fn(state, parallel.global_batch(mesh, batch)))
        yield jax.tree_util.tree_map(lambda a, k=rows.size: np.asarray(a)[:k], host)


def fit_statistics(method, state, split: data_lib.Split, mesh, batch_size: int, stats_fn=None, ctx=None):
    """``method``'s statistics over ``split`` (no augmentation), through the mesh; returns the
    state with them, replicated. The host sees per-sample outputs, padding rows removed."""
    fn = stats_fn or _Fn(ctx, "statistics", lambda: parallel.jit_score(mesh, method.statistics_batch))
    stats = method.fit_statistics(state, _per_sample(fn, state, split, mesh, batch_size))
    return parallel.to_replicated(mesh, state.replace(stats=stats))


def derive_split(fn, state, split: data_lib.Split, mesh, batch_size: int, ctx=None, name: str = "derive") -> dict:
    """``fn(state, batch)`` (a stage's :attr:`~jaxflow_ad.models.base.Stage.derive`) over ``split``
    in order, through the mesh: host arrays with one row per sample."""
    f = _Fn(ctx, name, lambda: parallel.jit_score(mesh, fn))
    parts = list(_per_sample(f, state, split, mesh, batch_size))
    return jax.tree_util.tree_map(lambda *a: np.concatenate(a), *parts)


def _sync_every(config, mesh) -> int:
    """How many steps the host lets the device run ahead before reading their metrics back
    (``train.sync_every``; ``"auto"``: 1 on a mesh of several CPU devices, whose steps must be waited
    for every step to avoid the 2-core collective deadlock of environment.md, else 10). Logging,
    statistics and checkpoints always read first, so a NaN is never saved."""
    v = config.train.get("sync_every", "auto")
    if v == "auto":
        return 1 if mesh.devices.flat[0].platform == "cpu" and mesh.devices.size > 1 else 10
    if int(v) < 1:
        raise ConfigError(f"train.sync_every={v!r}: use a positive number of steps or 'auto'")
    return int(v)


def category_workers(config, num_categories: int) -> int:
    """How many categories run at the same time (``parallel_categories``), each in a thread of this
    process, sharing the devices and the run's compiled executables.

    ``"auto"``: 2 on a single CPU device, where one category's steps leave part of the cores idle
    (PyramidFlow's quick start used 148 % of 2 cores one category at a time, 188 % two at a time,
    for 25 % less wall time and bitwise the same results; benchmarks/main_job.py), else 1. More
    than 1 is refused on a mesh of several devices or several processes: every device would run two
    programs with collectives in no fixed order."""
    v = config.get("parallel_categories", "auto")
    multi = jax.device_count() > 1 or jax.process_count() > 1
    if v == "auto":
        n = 2 if jax.devices()[0].platform == "cpu" and not multi else 1
    else:
        try:
            n = int(v)
        except (TypeError, ValueError):
            n = 0
        if n < 1:
            raise ConfigError(f"parallel_categories={v!r}: use a positive number of categories or 'auto'")
        if n > 1 and multi:
            raise ConfigError(
                f"parallel_categories={n} needs one device in one process; this run has {jax.device_count()} "
                f"devices in {jax.process_count()} processes, and each category's steps already use all of "
                "them: set parallel_categories=1 (or auto)"
            )
    return max(1, min(n, num_categories))


def _check_finite(m: dict, category: str, step: int, stage: str, epoch: int, files: list, ckpt) -> None:
    bad = [k for k in ("loss", "grad_norm") if k in m and not np.isfinite(m[k])]
    if bad:
        raise TrainingDiverged(
            f"{category}: {' and '.join(f'{k} = {m[k]}' for k in bad)} at step {step + 1} "
            f"(stage {stage}, epoch {epoch + 1}) on the batch {files[:8]}"
            f"{' ...' if len(files) > 8 else ''}; nothing of this step was saved (the last checkpoint "
            f"in {ckpt.directory} is intact). Lower the learning rate (--allow_config_change resumes "
            "from that checkpoint with the new value) or check those images."
        )


def restore_newest(ckpt: Checkpointer, plans: list[StagePlan], state):
    """``(state, step)`` of the newest readable checkpoint (restored into the optimizer structure of the
    stage the step belongs to), or ``None``."""
    last = plans[-1].end

    def target(step):
        if step > last:
            raise CheckpointError(
                f"{ckpt.directory} holds step {step}, past the {last} steps this config trains: it was made with "
                "more epochs or a smaller batch. Train into a new --workdir, or use the config it was made with."
            )
        p = next(p for p in plans if step <= p.end)
        return p.stage.init_opt(state, p.steps_per_epoch)

    return ckpt.restore_newest(target)


def check_data(config, root: pathlib.Path, categories: list[str]) -> None:
    """Every category's splits scanned (layout, labels, masks; no pixels) before any training: one
    DatasetError listing every problem found, not one per rerun."""
    reader = data_reader(config)
    if reader.scan is None:
        return
    problems = []
    for category in categories:
        for split in reader.splits:
            try:
                reader.scan(root, category, split, **reader_options(config))
            except data_lib.DatasetError as e:
                problems.append(f"{category}/{split}: {e}")
    if len(problems) == 1:
        raise data_lib.DatasetError(problems[0])
    if problems:
        raise data_lib.DatasetError(
            f"{len(problems)} problems in the data under {root}, fix them all before training:\n"
            + "\n".join(f"  {i + 1}. {p}" for i, p in enumerate(problems))
        )


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
    ctx: RunContext | None = None,
):
    """Run every stage from the latest checkpoint on; returns the trained state (statistics fitted)."""
    n = len(train)
    plans = plan_stages(method, config, n, category)
    eval_bs = int(config.eval.batch_size)
    stats_fn = None
    if method.has_statistics:
        stats_fn = _Fn(ctx, "statistics", lambda: parallel.jit_score(mesh, method.statistics_batch))
    start = 0
    found = restore_newest(ckpt, plans, state)
    if found is not None:
        restored, start = found
        state = parallel.to_replicated(mesh, restored)
        log.info("%s: resumed from step %d (%s)", category, start, ckpt.directory)
    timer = _Timer(cat_dir / "train_time.json")
    key = jax.random.PRNGKey(config.seed)
    for p in plans:
        stage, bs, spe, b, e = p.stage, p.batch_size, p.steps_per_epoch, p.begin, p.end
        if start >= e:
            continue
        if start == b:
            state = parallel.to_replicated(mesh, stage.init_opt(state, spe))
        if stats_fn is not None and p.index == len(plans) - 1:  # the statistics see this stage's state
            _, first = next(_padded_batches(train, eval_bs))
            stats_fn.compile_ahead(state, parallel.global_batch(mesh, first))
        split = train
        if stage.derive is not None:
            t0 = time.perf_counter()
            derived = derive_split(stage.derive, state, train, mesh, eval_bs, ctx, f"derive|{p.index}")
            split = train.with_samples(derived=derived)
            log.info(
                "%s %s: derived %s computed once in %.1f s (%.1f MB)",
                category,
                stage.name,
                jax.tree_util.tree_map(np.shape, derived),
                time.perf_counter() - t0,
                sum(v.nbytes for v in jax.tree_util.tree_leaves(derived)) / 2**20,
            )
        step_fn = _Fn(
            ctx, f"train|{p.index}|{spe}", lambda st=stage, k=spe: parallel.jit_train_step(mesh, st.train_step(k))
        )
        refresh = int(stage.refresh_statistics_every) * spe
        schedule = stage.learning_rate(spe) if stage.learning_rate is not None else None
        bar = tqdm(
            total=e - b,
            initial=start - b,
            desc=f"{category} {stage.name}",
            disable=not _is_main(),
            dynamic_ncols=True,
            leave=False,
            mininterval=_BAR_INTERVAL,
        )

        def batches(p=p, stage=stage, bs=bs, spe=spe, b=b, split=split, begin=start, end=e):
            for step in range(begin, end):  # host work: run ahead of the device by _Prefetch
                epoch, i = divmod(step - b, spe)
                order = np.random.default_rng([config.seed, p.index, epoch]).permutation(n)
                rng = np.random.default_rng([config.seed, p.index, step])
                rows = order[i * bs : (i + 1) * bs]
                batch = stage.prepare_batch(split.take(rows), rng)
                yield step, epoch, rows, parallel.global_batch(mesh, batch)

        depth = int(config.train.get("prefetch", 2))  # batches prepared ahead by a thread (0: none)
        sync_every = _sync_every(config, mesh)
        prefetch = _Prefetch(batches(), depth) if depth > 0 else None
        try:
            pending = []  # steps dispatched but not yet read back
            for step, epoch, rows, batch in prefetch if prefetch is not None else batches():
                state, m_dev = step_fn(state, batch, jax.random.fold_in(key, step))
                pending.append((step, epoch, rows, m_dev))
                last = step + 1 == e
                final = last and p.index == len(plans) - 1
                stats_due = method.has_statistics and ((refresh and (step + 1 - b) % refresh == 0) or final)
                log_due = (step + 1) % config.train.log_every_steps == 0 or last
                stopping = ctx is not None and ctx.stop is not None and ctx.stop.is_set() and not last
                ckpt_due = (step + 1) % config.train.checkpoint_every_steps == 0 or last or stopping
                if len(pending) < sync_every and not (stats_due or log_due or ckpt_due):
                    continue  # let the device run ahead; read these metrics later
                for s_, epoch_, rows_, md in pending:  # waits for the steps (on CPU every step: sync_every 1)
                    m = {name: float(v) for name, v in md.items()}
                    _check_finite(m, category, s_, stage.name, epoch_, [train.paths[r] for r in rows_], ckpt)
                bar.set_postfix(loss=f"{m['loss']:.4g}", refresh=False)
                bar.update(len(pending))
                pending.clear()
                if stats_due:
                    with _phase(ctx, "statistics"):
                        state = fit_statistics(method, state, train, mesh, eval_bs, stats_fn)
                    writer.write(step + 1, {f"train/{stage.name}/statistics_refit": 1.0})
                if log_due:
                    if schedule is not None:
                        m["lr"] = float(schedule(step - b))  # the rate of this step's update (optax count)
                    writer.write(step + 1, {f"train/{stage.name}/{name}": v for name, v in m.items()})
                if ckpt_due:
                    ckpt.save(step + 1, state, force=True)
                    timer.save()
                if stopping:
                    ckpt.wait()
                    raise Stopped(category, step + 1)
        finally:
            if prefetch is not None:
                prefetch.close()
        bar.close()
        start = e
    ckpt.wait()
    timer.save()
    return state, timer.total


def holdout_split(config, train: data_lib.Split) -> tuple[data_lib.Split, data_lib.Split | None]:
    """``(fit, holdout)``: ``eval.threshold.holdout`` of the training images kept out of training
    to choose the threshold on (``None`` when 0). Which images is fixed (``default_rng(0)``), the
    same for every seed and every mode, so a resumed or evaluate-only run sees the same split."""
    f = float(config.eval.threshold.holdout)
    if f == 0.0:
        return train, None
    n = len(train)
    if not 0.0 < f < 1.0:
        raise ConfigError(f"eval.threshold.holdout={f}: use a fraction of train/good in (0, 1), or 0 for no threshold")
    k = max(1, int(round(f * n)))
    if k >= n:
        raise ConfigError(f"eval.threshold.holdout={f} keeps all {n} training images of {train.category} out; lower it")
    rows = np.sort(np.random.default_rng(0).permutation(n)[:k])
    return train.subset(np.setdiff1d(np.arange(n), rows), "fit"), train.subset(rows, "holdout")


def fit_threshold(method, config, state, holdout: data_lib.Split, mesh, ctx: RunContext | None = None) -> dict:
    """The image threshold: ``eval.threshold.quantile`` of the held-out normal images' scores; the pixel
    threshold: ``eval.threshold.pixel_quantile`` of all their map values (for predicted masks); with the
    lowest of each, the anchors of :func:`~jaxflow_ad.metrics.normalize_scores`."""
    maps, scores, _ = score_split(method, config, state, holdout, mesh, desc="threshold", ctx=ctx)
    q = float(config.eval.threshold.quantile)
    pq = float(config.eval.threshold.get("pixel_quantile", 0.999))
    return {
        "source": "holdout",
        "images": len(holdout),
        "quantile": q,
        "image": metrics_lib.quantile_threshold(scores, q),
        "holdout_min": float(np.min(scores)),
        "holdout_median": float(np.median(scores)),
        "holdout_max": float(np.max(scores)),
        "pixel_quantile": pq,
        "pixel": metrics_lib.quantile_threshold(maps, pq),
        "pixel_min": float(np.min(maps)),
    }


def validation_split(config, reader, category: str, size, opts: dict) -> data_lib.Split | None:
    """The labelled validation split of ``category`` that ``eval.threshold.validation_root`` names (a
    folder in the same layout as the data: its ``eval.threshold.validation_split``, default ``test``),
    or ``None`` when the key is empty. Read before training, like the test split, so that a broken
    file stops the run before any step."""
    root = str(config.eval.threshold.get("validation_root", "") or "")
    if not root:
        return None
    name = str(config.eval.threshold.get("validation_split", "test") or "test")
    if name not in reader.splits:
        raise ConfigError(
            f"eval.threshold.validation_split={name!r} is not a split of the {reader.name!r} layout; "
            f"use one of {list(reader.splits)}"
        )
    val = reader.load_split(pathlib.Path(root).expanduser(), category, name, size, resize=config.data.resize, **opts)
    labels = np.asarray(val.labels)
    if not ((labels == 1).any() and (labels == 0).any()):
        raise ConfigError(
            f"eval.threshold.validation_root={root!r}: {category}/{name} holds "
            f"{'only defective' if (labels == 1).all() else 'only good'} images ({len(val)}); an F1-optimal "
            "threshold needs both good and defective ones. Point it at a labelled split, or use "
            "eval.threshold.holdout (a quantile of held-out normal images) instead."
        )
    return val


def fit_threshold_validation(method, config, state, val: data_lib.Split, mesh, ctx: RunContext | None = None) -> dict:
    """(a) F1-optimal thresholds on a labelled validation split: the image threshold maximising the
    image F1 (:func:`~jaxflow_ad.metrics.image_f1_max`'s threshold: flagged when ``score >= it``), and,
    when the split has masks, the pixel threshold maximising the pixel F1 over its maps and masks at
    the map's size. ``holdout_min`` (the low anchor of :func:`~jaxflow_ad.metrics.normalize_scores`)
    is the lowest score of its good images, ``pixel_min`` the lowest map value."""
    maps, scores, _ = score_split(method, config, state, val, mesh, desc="threshold", ctx=ctx)
    labels = np.asarray(val.labels)
    f1, thr = metrics_lib.image_f1_max(labels, scores, return_threshold=True)
    out = {
        "source": "validation",
        "split": f"{config.eval.threshold.validation_root}/{val.category}/{val.split}",
        "images": len(val),
        "defective": int(labels.sum()),
        "image": float(thr),
        "validation_f1": float(f1),
        "holdout_min": float(np.min(scores[labels == 0])),
        "holdout_median": float(np.median(scores[labels == 0])),
        "holdout_max": float(np.max(scores[labels == 0])),
        "pixel_min": float(np.min(maps)),
    }
    if getattr(val, "has_masks", True) and maps.shape[-1] == maps.shape[-2]:
        pf1, pthr = metrics_lib.pixel_f1_max(val.masks_at(maps.shape[-1]), maps, return_threshold=True)
        out.update(pixel=float(pthr), validation_pixel_f1=float(pf1))
    return out


def score_split(
    method, config, state, split: data_lib.Split, mesh, desc: str = "evaluate", ctx: RunContext | None = None
) -> tuple[np.ndarray, np.ndarray, float]:
    """Anomaly maps and image scores of ``split``; inference images/s (compile excluded)."""
    bs = int(config.eval.batch_size)
    parallel.check_batch_size(bs, "eval.batch_size")
    score = _Fn(ctx, "score", lambda: parallel.jit_score(mesh, method.score, num_args=3))
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 1)
    n_batches = -(-len(split) // bs)
    _, first = next(_padded_batches(split, bs))
    jax.block_until_ready(score(state, parallel.global_batch(mesh, first), key))  # compile (and warm up)
    maps, scores = [], []
    t0 = time.perf_counter()
    bar = tqdm(total=n_batches, desc=desc, disable=not _is_main(), leave=False, mininterval=_BAR_INTERVAL)
    for j, (_, batch) in enumerate(_padded_batches(split, bs)):
        m, s = score(state, parallel.global_batch(mesh, batch), jax.random.fold_in(key, j))
        maps.append(np.asarray(jax.device_get(m)))
        scores.append(np.asarray(jax.device_get(s)))
        bar.update(1)
    bar.close()
    seconds = time.perf_counter() - t0
    n = len(split)
    return np.concatenate(maps)[:n], np.concatenate(scores)[:n], n_batches * bs / seconds


def evaluate_category(
    method, config, state, test: data_lib.Split, mesh, threshold: dict | None = None, ctx: RunContext | None = None
) -> tuple[dict, np.ndarray, np.ndarray]:
    """Anomaly maps and scores of the test split; metrics; inference throughput (compile excluded);
    with a ``threshold`` (:func:`fit_threshold`) also ``image_precision``, ``image_recall``,
    ``image_f1``, ``image_false_alarm_rate`` and ``image_miss_rate`` at it."""
    maps, scores, images_per_s = score_split(method, config, state, test, mesh, ctx=ctx)
    bad = [p for p, s, m in zip(test.paths, scores, maps) if not (np.isfinite(s) and np.all(np.isfinite(m)))]
    if bad:
        raise TrainingDiverged(
            f"{len(bad)} of {len(test)} test images of {test.category} got a NaN or infinite score or map "
            f"(e.g. {bad[:3]}): the trained model is numerically broken. Retrain with a lower learning rate, "
            "or check those images."
        )
    res = config.eval.resolution
    res = res if res == "native" else int(res)
    protocol = {"fpr_limit": config.eval.fpr_limit, "resolution": res, "mask_resize": config.eval.mask_resize}
    if getattr(test, "has_masks", True):
        result = metrics_lib.evaluate(test.labels, scores, test.masks, maps, **protocol)
        result["per_defect"] = metrics_lib.evaluate_by_defect(
            test.labels, scores, test.masks, maps, test.defect_types, **protocol
        )
    else:  # a dataset without masks (e.g. data.layout=folder without a mask folder): image metrics only
        log.warning("%s: the test split has no masks: pixel metrics are not computed", test.category)
        result = image_metrics(test.labels, scores)
        kinds = np.asarray(test.defect_types)
        result["per_defect"] = {
            k: {
                "image_auroc": metrics_lib.image_auroc(*_against_good(test.labels, scores, kinds, k)),
                "count": float((kinds == k).sum()),
            }
            for k in sorted(set(kinds.tolist()) - {"good"})
        }
    result["images_per_s"] = images_per_s
    if threshold is not None:
        result["operating_point"] = report.operating_point(test.labels, scores, test.defect_types, threshold["image"])
        at = metrics_lib.classification_at(test.labels, scores, threshold["image"])
        result.update({f"image_{k}": at[k] for k in metrics_lib.AT_THRESHOLD_KEYS})
        result["threshold"] = {**threshold, **{k: at[k] for k in ("tp", "fp", "fn", "tn")}}
    return result, maps, scores


def image_metrics(labels, scores) -> dict:
    """The image-level part of :func:`jaxflow_ad.metrics.evaluate` (for splits without masks)."""
    return {
        "image_auroc": metrics_lib.image_auroc(labels, scores),
        "image_ap": metrics_lib.image_ap(labels, scores),
        "image_f1_max": metrics_lib.image_f1_max(labels, scores),
    }


def _against_good(labels, scores, kinds: np.ndarray, kind: str):
    idx = (kinds == "good") | (kinds == kind)
    return np.asarray(labels)[idx], np.asarray(scores)[idx]


def example_batch(method, train: data_lib.Split) -> dict:
    """One training sample for ``method.init``; extractor features as zeros of the right shape
    (their shapes come from ``jax.eval_shape``: no extractor run)."""
    example = train.take(np.arange(1))
    ext = method.extractor
    if ext is not None:
        shapes = ext.output_shapes_like(ext.inputs(example))
        example["features"] = {t: np.zeros(s, np.float32) for t, s in shapes.items()}
    return example


class _Methods:
    """The methods of a run by :func:`method_key`: a category whose per-category config equals an
    earlier one's reuses its method (and so its compiled executables). Thread-safe."""

    def __init__(self):
        self._by_key: dict = {}
        self._lock = threading.Lock()

    def get(self, key: str, cfg):
        with self._lock:
            if key not in self._by_key:
                self._by_key[key] = models.build(cfg)
            return self._by_key[key]


def _run_concurrently(fn, categories: list[str], workers: int) -> dict:
    """``{category: fn(category, stop)}`` with ``workers`` categories at a time, in threads (the device
    and the compiled executables are shared; JAX releases the GIL while a step runs). When one fails
    or the run is interrupted, the categories not yet started are not started, the running ones stop
    at their next training step with a checkpoint saved (a rerun resumes them; :class:`Stopped`), and
    the first failure is raised."""
    results, failures, skipped, stop = {}, [], [], threading.Event()

    def task(category):
        if stop.is_set():  # a category failed (or Ctrl-C) before this one started
            skipped.append(category)
            return None
        try:
            return fn(category, stop)
        except Stopped:
            raise
        except BaseException:
            stop.set()  # here, before this thread takes the next category
            raise

    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="jaxflow_ad-category") as pool:
        futures = {pool.submit(task, c): c for c in categories}
        try:
            for future in concurrent.futures.as_completed(futures):
                e = future.exception()
                if isinstance(e, Stopped):
                    log.warning("%s", e)
                elif e is not None:
                    failures.append(e)
                elif futures[future] not in skipped:
                    results[futures[future]] = future.result()
        except BaseException:  # Ctrl-C while waiting: the running categories stop and save first
            stop.set()
            raise
    if failures:
        if skipped:
            log.warning("not started after the failure: %s", sorted(skipped, key=categories.index))
        raise failures[0]
    return {c: results[c] for c in categories}


def run_category(
    config,
    workdir: pathlib.Path,
    root: pathlib.Path,
    category: str,
    mode: str,
    compiled: CompileCache | None = None,
    methods: _Methods | None = None,
    stop: threading.Event | None = None,
) -> dict:
    """Train and/or evaluate one category. ``compiled`` and ``methods`` are shared by the categories
    of a run: a category whose method config equals an earlier one's reuses its method and its
    compiled executables; ``stop`` (set by :func:`_run_concurrently`) stops training early. The result
    has ``time_s``: seconds per phase (:class:`Timings`)."""
    timings = Timings()
    with timings.phase("data"):
        cfg = models.configure(config, category)
        key = method_key(cfg)
        method = (methods if methods is not None else _Methods()).get(key, cfg)
        ctx = RunContext(
            compiled if compiled is not None else CompileCache(), timings, method_key(cfg, device_only=True), stop
        )
        cat_dir = workdir / category
        cat_dir.mkdir(parents=True, exist_ok=True)
        reader = data_reader(cfg)
        size = int(cfg.data.image_size)
        notes = list(method.notes) + ([method.extractor.note] if method.extractor and method.extractor.note else [])
        for note in notes:
            log.warning("%s: %s", category, note)
        mesh = parallel.make_mesh()
        cache = FeatureCache(
            cat_dir / "features",
            mesh,
            int(cfg.eval.batch_size),
            int(cfg.data.feature_cache_memory_mb) * 2**20,
            compiled=ctx.compiled,
            timings=timings,
        )
        opts = reader_options(cfg)
        if "cache_dir" in reader.options and not opts.get("cache_dir"):
            opts["cache_dir"] = str(cat_dir / "cache")  # per-sample preprocessing, once per file and setting
        train, holdout = holdout_split(
            cfg, reader.load_split(root, category, "train", size, resize=cfg.data.resize, **opts)
        )
        # the test split is read (every image and mask decoded and checked) before training, not after it
        test = reader.load_split(root, category, "test", size, resize=cfg.data.resize, **opts)
        validation = validation_split(cfg, reader, category, size, opts)
        rng = jax.random.PRNGKey(cfg.seed)
        # Method.jit_init: one jitted program (through the run's and XLA's compilation caches), not hundreds
        # of eager ops each compiled on its own (PyramidFlow's quick start: 6.3 s -> 0.5 s, the same values)
        init = _Fn(ctx, "init", lambda: jax.jit(method.init)) if method.jit_init else method.init
        state = parallel.to_replicated(mesh, init(rng, example_batch(method, train)))
        if _is_main():  # what --mode=predict needs to restore without reading the data
            report.write_text_atomic(cat_dir / "plan.json", json.dumps({"train_images": len(train)}))
        ckpt = Checkpointer(cat_dir / "checkpoints")
        ckpt.check_model(model_signature(str(cfg.model.name), state))
    writer = ScalarWriter(workdir, category)

    def attach(split):
        with timings.phase("features"):
            return cache.attach(method.extractor, split)

    try:
        if mode in ("train", "all"):
            train = attach(train)
            with timings.phase("train"):
                state, train_time = train_category(
                    method, cfg, train, category, cat_dir, mesh, ckpt, writer, state, ctx
                )
        else:
            with timings.phase("data"):
                found = restore_newest(ckpt, plan_stages(method, cfg, len(train), category), state)
            if found is None:
                raise CheckpointError(f"no checkpoint in {ckpt.directory}: run with --mode=train or --mode=all first")
            state = parallel.to_replicated(mesh, found[0])
            if method.has_statistics and not jax.tree_util.tree_leaves(state.stats):
                train = attach(train)
                with timings.phase("statistics"):
                    state = fit_statistics(method, state, train, mesh, int(cfg.eval.batch_size), ctx=ctx)
            t = cat_dir / "train_time.json"
            train_time = json.loads(t.read_text())["seconds"] if t.exists() else float("nan")
        threshold = None
        manual = cfg.eval.threshold.get("manual", "")
        if manual not in ("", None):  # (c) a threshold set by hand: decisions and rates at it
            threshold = {"source": "manual", "image": float(manual)}
            if _is_main():
                report.write_text_atomic(cat_dir / "threshold.json", json.dumps(threshold, indent=2, sort_keys=True))
        elif validation is not None:  # (a) F1-optimal on a labelled validation split
            validation = attach(validation)
            with timings.phase("evaluate"):
                threshold = fit_threshold_validation(method, cfg, state, validation, mesh, ctx)
            if _is_main():
                report.write_text_atomic(cat_dir / "threshold.json", json.dumps(threshold, indent=2, sort_keys=True))
        elif holdout is not None:  # (b) a quantile of normal images held out of training
            holdout = attach(holdout)
            with timings.phase("evaluate"):
                threshold = fit_threshold(method, cfg, state, holdout, mesh, ctx)
            if _is_main():
                report.write_text_atomic(cat_dir / "threshold.json", json.dumps(threshold, indent=2, sort_keys=True))
        if mode == "train":
            return {"train_time_s": train_time, "time_s": timings.as_dict()}
        test = attach(test)
        with timings.phase("evaluate"):
            result, maps, scores = evaluate_category(method, cfg, state, test, mesh, threshold, ctx)
        result["train_time_s"] = train_time
        with timings.phase("report"):
            writer.write(int(jax.device_get(state.step)), report.flat_scalars(result, "eval"))
            if _is_main():
                written = report.write_heatmaps(
                    cat_dir / "heatmaps",
                    test.images,
                    test.masks,
                    maps,
                    test.defect_types,
                    test.paths,
                    int(cfg.eval.num_heatmaps),
                    scores,
                )
                writer.write_images(  # the first panel of each kind (the most telling one)
                    int(jax.device_get(state.step)),
                    {
                        f"heatmaps/{n.split('_')[0]}": np.asarray(Image.open(cat_dir / "heatmaps" / n))
                        for n in written
                        if "_00_" in n
                    },
                )
                report.score_histogram(
                    cat_dir / "score_histogram.png", test.labels, scores, threshold["image"] if threshold else None
                )
                for name, img in method.artifacts(state).items():
                    report.save_image(cat_dir / f"{name}.png", img)
                report.write_scores_csv(cat_dir / "scores.csv", test, scores, threshold)
        result["time_s"] = timings.as_dict()
        if _is_main():
            report.write_text_atomic(
                cat_dir / "metrics.json", json.dumps({**result, "notes": notes}, indent=2, sort_keys=True)
            )
        return result
    finally:
        writer.close()
        ckpt.close()


def run(
    config: ml_collections.ConfigDict,
    workdir: str | pathlib.Path,
    mode: str = "all",
    allow_config_change: bool = False,
) -> dict:
    """Train and/or evaluate every configured category; returns ``{category: metrics}``."""
    if mode not in MODES:
        raise ConfigError(f"--mode={mode!r}: use one of {MODES}")
    cache_dir = enable_persistent_cache(str(config.get("compile_cache", "default")))
    log.info("XLA compilation cache: %s", cache_dir or "off")
    workdir = workdir_lib.prepare(workdir)
    with workdir_lib.WorkdirLock(workdir) if _is_main() else contextlib.nullcontext():
        return _run_locked(config, workdir, mode, allow_config_change)


def restore_trained(config: ml_collections.ConfigDict, workdir: pathlib.Path, category: str | None):
    """``(cfg, method, state, cat_dir, mesh, threshold)`` of a trained category of ``workdir``, restored
    without reading the dataset (``plan.json`` says how many training images planned the steps)."""
    trained = sorted(p.parent.name for p in workdir.glob("*/plan.json"))
    if category is None and len(trained) != 1:
        raise ConfigError(
            f"{workdir} holds {len(trained)} trained categories {trained}: choose one with --config.predict.category"
        )
    category = category or trained[0]
    if category not in trained:
        raise CheckpointError(f"no trained category {category!r} in {workdir} (trained: {trained})")
    cfg = models.configure(config, category)
    method = models.build(cfg)
    if method.extractor is not None and method.extractor.multimodal:
        raise ConfigError(
            f"{method.name} reads {list(method.extractor.modality)} per sample; --mode=predict and --mode=export "
            "take images only. Score RGB + point-cloud samples with --mode=eval on a dataset in their layout "
            "(config keys data.layout and data.root)"
        )
    mesh = parallel.make_mesh()
    cat_dir = workdir / category
    n = json.loads((cat_dir / "plan.json").read_text())["train_images"]
    size = int(cfg.data.image_size)
    example = {"image": np.zeros((1, size, size, 3), np.uint8)}
    if method.extractor is not None:
        example["features"] = {
            t: np.zeros(s, np.float32) for t, s in method.extractor.output_shapes((1, size, size, 3)).items()
        }
    state = method.init(jax.random.PRNGKey(cfg.seed), example)
    ckpt = Checkpointer(cat_dir / "checkpoints")
    try:
        ckpt.check_model(model_signature(str(cfg.model.name), state))
        found = restore_newest(ckpt, plan_stages(method, cfg, n, category), state)
    finally:
        ckpt.close()
    if found is None:
        raise CheckpointError(f"no checkpoint in {ckpt.directory}: train first (--mode=train or --mode=all)")
    state = parallel.to_replicated(mesh, found[0])
    if method.has_statistics and not jax.tree_util.tree_leaves(state.stats):
        raise CheckpointError(f"the checkpoint in {ckpt.directory} has no fitted statistics: run --mode=eval once")
    t = cat_dir / "threshold.json"
    threshold = json.loads(t.read_text()) if t.exists() else None
    return cfg, method, state, cat_dir, mesh, threshold


def predict_workdir(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict:
    """``--mode=predict``: a trained category of ``workdir`` (``predict.category``, or the only one)
    scores ``predict.input`` (:mod:`jaxflow_ad.engine.predict`); nothing of the dataset is read."""
    from jaxflow_ad.engine.predict import predict_category

    cfg, method, state, cat_dir, mesh, threshold = restore_trained(
        config, workdir, str(config.predict.get("category", "")) or None
    )
    category = cat_dir.name
    return {category: predict_category(method, cfg, state, category, cat_dir, mesh, threshold)}


def export_workdir(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict:
    """``--mode=export``: every trained category of ``workdir`` (or ``predict.category``) to
    ``<workdir>/<category>/export/`` (:func:`jaxflow_ad.export.export_scorer`)."""
    from jaxflow_ad.export import export_scorer

    wanted = str(config.predict.get("category", "")) or None
    cats = [wanted] if wanted else sorted(p.parent.name for p in workdir.glob("*/plan.json"))
    if not cats:
        raise CheckpointError(f"no trained category in {workdir}: train first (--mode=train or --mode=all)")
    out = {}
    for category in cats:
        cfg, method, state, cat_dir, _, threshold = restore_trained(config, workdir, category)
        path = export_scorer(method, state, cfg, threshold, cat_dir / "export")
        log.info("%s: scorer exported to %s", category, path)
        out[category] = {"export": str(path)}
    return out


def _run_locked(config: ml_collections.ConfigDict, workdir: pathlib.Path, mode: str, allow_change: bool) -> dict:
    models.check_config(config)
    for key in ("train.batch_size", "eval.batch_size"):  # before any data is read or anything is built
        section, name = key.split(".")
        if name in config[section]:
            parallel.check_batch_size(config[section][name], key)
    config, write_config = workdir_lib.reconcile_config(workdir, config, mode, allow_change)
    if mode == "predict":
        return predict_workdir(config, workdir)
    if mode == "export":
        return export_workdir(config, workdir)
    root, categories = resolve_data(config)
    check_data(config, root, categories)
    if _is_main():
        if write_config:
            report.write_text_atomic(workdir / "config.json", config.to_json_best_effort(indent=2))
        log.info(
            "data: %s, categories: %s, devices: %d (%s), processes: %d",
            root,
            categories,
            jax.device_count(),
            jax.devices()[0].platform,
            jax.process_count(),
        )
    results, compiled, methods = {}, CompileCache(), _Methods()
    workers = category_workers(config, len(categories))
    t0 = time.perf_counter()

    def one(category, stop=None):
        result = run_category(config, workdir, root, category, mode, compiled, methods, stop)
        if _is_main():
            log.info("%s: %s", category, json.dumps(report.rounded(result)))
        return result

    if workers == 1:
        for category in categories:
            results[category] = one(category)
    else:
        log.info("categories: %d at a time (parallel_categories)", workers)
        results = _run_concurrently(one, categories, workers)
    wall = time.perf_counter() - t0
    if _is_main():
        times = time_table({c: r["time_s"] for c, r in results.items()})
        if workers > 1:
            times += (
                f"\n{workers} categories at a time (parallel_categories): each row is its own category's wall "
                f"time; the run took {wall:.1f} s.\n"
            )
        log.info("where the time went (s; %d executables compiled in this run):\n%s", compiled.compiled, times)
    if _is_main() and mode != "train":
        run_info = {"wall_s": round(wall, 3), "parallel_categories": workers}
        table = report.write_summary(workdir, results, config.to_json_best_effort(), run_info)
        print("\n" + table + "\nWhere the time went (s):\n\n" + times, flush=True)
    elif _is_main():
        print("\nWhere the time went (s):\n\n" + times, flush=True)
    return results
