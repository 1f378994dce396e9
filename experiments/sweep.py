"""Methods x categories x seeds from one command, one results table, resumable.

    python -m experiments.sweep --configs=configs/pyramidflow.py,configs/fair.py \
        --categories=gravel,coin --seeds=0,1,2 --out=runs/sweep [--set=train.epochs=3 ...]

Each run trains and evaluates one (config, category, seed) in its own workdir
``<out>/<method>/<category>/seed<k>`` through :func:`jaxflow_ad.engine.run` (all
in one process: compiled steps and the XLA cache are shared). After each run a
row is appended to ``<out>/results.csv`` (config, method, category, seed, the
metrics, wall seconds); a rerun skips the rows already there, so an interrupted
sweep resumes where it stopped (a run cut in the middle resumes from its
checkpoint). ``<out>/summary.csv`` and ``summary.md`` hold the mean and standard
deviation (ddof 1) over seeds of every (config, category) cell, rewritten after
each run. ``--set key=value`` overrides a config value in every run (the value is
parsed as the type the config has). ``--configs`` entries are config files, with
``:variant`` as for the main command. An error stops the sweep with one line and
exit code 2, like the main command; fix it and rerun.
"""

from __future__ import annotations

import csv
import importlib.util
import logging
import pathlib
import sys
import time

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list("configs", None, "Config files, e.g. configs/pyramidflow.py,configs/fair.py:smoke.")
flags.DEFINE_list("categories", [], "Categories (default: each config's data.categories).")
flags.DEFINE_list("seeds", ["0"], "Seeds.")
flags.DEFINE_string("out", "runs/sweep", "Output folder (workdirs, results.csv, summary).")
flags.DEFINE_multi_string("set", [], "key=value applied to every config, e.g. train.epochs=3.")
flags.mark_flags_as_required(["configs"])

METRICS = ("image_auroc", "pixel_auroc", "aupro", "image_ap", "pixel_ap", "image_f1_max", "pixel_f1_max")
KEY = ("config", "category", "seed")


def load_config(spec: str):
    """``path.py[:variant]`` -> ConfigDict (``get_config(variant)``, or ``get_config()`` without one)."""
    path, _, variant = spec.partition(":")
    file = pathlib.Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"--configs: no config file {path}")
    module_spec = importlib.util.spec_from_file_location(f"_sweep_cfg_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(variant) if variant else module.get_config()


def apply_override(cfg, assignment: str) -> None:
    key, sep, raw = assignment.partition("=")
    if not sep:
        raise ValueError(f"--set {assignment!r}: use key=value")
    *parents, leaf = key.split(".")
    node = cfg
    for p in parents:
        node = node[p]
    current = node[leaf]
    if isinstance(current, bool):
        value = raw.lower() in ("1", "true", "yes")
    elif isinstance(current, (int, float)):
        value = type(current)(raw)
    else:
        value = raw
    node[leaf] = value


def read_rows(path: pathlib.Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def summarize(rows: list[dict], out: pathlib.Path) -> str:
    """Mean and sd over seeds per (config, category) to summary.csv and summary.md; returns the table."""
    cells: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        cells.setdefault((r["config"], r["category"]), []).append(r)
    header = ["config", "category", "seeds"] + [f"{m}_{s}" for m in METRICS for s in ("mean", "sd")]
    lines = [
        "| config | category | seeds | " + " | ".join(METRICS) + " |",
        "|" + "---|" * (len(METRICS) + 3),
    ]
    with (out / "summary.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for (cfg, cat), rs in cells.items():
            vals = []
            cells_md = []
            for m in METRICS:
                x = np.array([float(r[m]) for r in rs if r.get(m) not in ("", None)], np.float64)
                mean = float(x.mean()) if x.size else float("nan")
                sd = float(x.std(ddof=1)) if x.size > 1 else float("nan")
                vals += [f"{mean:.6f}", f"{sd:.6f}"]
                cells_md.append(f"{100 * mean:.1f} ± {100 * sd:.1f}" if x.size > 1 else f"{100 * mean:.1f}")
            w.writerow([cfg, cat, len(rs), *vals])
            lines.append(f"| {cfg} | {cat} | {len(rs)} | " + " | ".join(cells_md) + " |")
    table = "\n".join(lines) + "\n"
    (out / "summary.md").write_text("Mean ± sd over seeds (%).\n\n" + table)
    return table


def sweep(configs: list[str], categories: list[str], seeds: list[int], out: pathlib.Path, sets: list[str]) -> str:
    from jaxflow_ad import engine

    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.csv"
    rows = read_rows(results)
    done = {tuple(r[k] for k in KEY) for r in rows}
    columns = [*KEY, "method", *METRICS, "wall_s"]
    for spec in configs:
        base = load_config(spec)
        for assignment in sets:
            apply_override(base, assignment)
        cats = categories or [c.strip() for c in str(base.data.categories).split(",") if c.strip()]
        if not cats:
            raise ValueError(f"{spec}: give --categories (the config's data.categories is empty)")
        for cat in cats:
            for seed in seeds:
                if (spec, cat, str(seed)) in done:
                    continue
                cfg = load_config(spec)
                for assignment in sets:
                    apply_override(cfg, assignment)
                cfg.data.categories = cat
                cfg.seed = int(seed)
                workdir = out / str(cfg.model.name) / cat / f"seed{seed}"
                t0 = time.perf_counter()
                r = engine.run(cfg, workdir, "all")[cat]
                row = {"config": spec, "category": cat, "seed": seed, "method": cfg.model.name}
                row.update({m: f"{r[m]:.6f}" if m in r else "" for m in METRICS})
                row["wall_s"] = f"{time.perf_counter() - t0:.1f}"
                new = not results.exists()
                with results.open("a", newline="") as f:
                    w = csv.DictWriter(f, fieldnames=columns)
                    if new:
                        w.writeheader()
                    w.writerow(row)
                rows.append({k: str(v) for k, v in row.items()})
                summarize(rows, out)
    return summarize(rows, out) if rows else ""


def main(argv):
    del argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", force=True)
    from jaxflow_ad.errors import user_errors

    try:
        table = sweep(
            FLAGS.configs, FLAGS.categories, [int(s) for s in FLAGS.seeds], pathlib.Path(FLAGS.out), FLAGS.set
        )
    except (*user_errors(), FileNotFoundError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    print("\n" + table, flush=True)


if __name__ == "__main__":
    app.run(main)
