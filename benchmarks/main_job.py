"""The quick-start command timed as a whole: once cold (empty compilation cache), once warm (cache filled).

Runs ``python -m experiments.main --config=<config> --workdir=<fresh folder>`` twice with
``JAXFLOW_AD_CACHE`` pointing at one new, empty folder, so that the first run compiles
everything and fills the cache and the second loads from it. The built-in dataset must
already be written (the first ``make run`` does it), so that data generation is not timed.
Printed: the wall time of each run, its "where the time went" table (from each
category's ``metrics.json``) and whether the metrics agree to the printed digit.

``--baseline REV`` also times the same command on an older commit (``git archive REV``
unpacked to a temporary folder, run with this checkout's virtual environment) before the
two runs, as the "today" of a speed-up claim; the old code has no persistent cache, so
its one run stands for both its cold and warm time.

Usage (from the checkout root, on an otherwise idle machine)::

    .venv/bin/python benchmarks/main_job.py --baseline 8a63732 --json runs/main_job.json
    .venv/bin/python benchmarks/main_job.py --config configs/nfbmr.py

Measured numbers are in the README (Quick start) and in the closing note of issue 18.
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
PHASES = ("data", "features", "compile", "train", "statistics", "evaluate", "report", "total")


def run_once(code_root: pathlib.Path, config: str, workdir: pathlib.Path, cache: pathlib.Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(code_root), JAXFLOW_AD_CACHE=str(cache))
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    cmd = [sys.executable, "-m", "experiments.main", f"--config={config}", f"--workdir={workdir}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=code_root, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    summary = json.loads((workdir / "metrics.json").read_text())
    cats = summary["categories"]
    return {
        "wall_s": wall,
        "mean": {k: summary["mean"][k] for k in ("image_auroc", "pixel_auroc", "aupro") if k in summary["mean"]},
        "time_s": {c: r.get("time_s", {}) for c, r in cats.items()},
    }


def table(result: dict) -> str:
    rows = ["| category | " + " | ".join(PHASES) + " |", "|" + "---|" * (len(PHASES) + 1)]
    for cat, t in result["time_s"].items():
        rows.append(f"| {cat} | " + " | ".join(f"{t[p]:.1f}" if p in t else "-" for p in PHASES) + " |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/pyramidflow.py")
    ap.add_argument("--baseline", default="", help="a git revision to time first (the 'today' of a speed-up)")
    ap.add_argument("--json", default="", help="also write the results here")
    a = ap.parse_args()
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    print(
        f"# machine: {platform.node()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"python {platform.python_version()}, load average {load}"
    )
    out: dict = {"config": a.config, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="main_job_") as tmp:
        tmp = pathlib.Path(tmp)
        if a.baseline:
            base = tmp / "baseline"
            base.mkdir()
            archive = subprocess.run(["git", "archive", a.baseline], cwd=ROOT, capture_output=True, check=True)
            subprocess.run(["tar", "-x", "-C", str(base)], input=archive.stdout, check=True)
            r = run_once(base, a.config, tmp / "run_baseline", tmp / "xla_baseline")
            out["baseline"] = {"rev": a.baseline, **r}
            print(f"baseline {a.baseline}: {r['wall_s']:.1f} s; mean {r['mean']}")
        cache = tmp / "xla"
        for name in ("cold", "warm"):
            r = run_once(ROOT, a.config, tmp / f"run_{name}", cache)
            out[name] = r
            print(f"\n{name}: {r['wall_s']:.1f} s wall; mean {r['mean']}\n{table(r)}")
    same = out["cold"]["mean"] == out["warm"]["mean"]
    rounded = {k: round(100 * v, 1) for k, v in out["warm"]["mean"].items()}
    print(f"\nmetrics cold == warm: {same}; warm mean (%): {rounded}")
    if "baseline" in out:
        b, w = out["baseline"]["wall_s"], out["warm"]["wall_s"]
        base_rounded = {k: round(100 * v, 1) for k, v in out["baseline"]["mean"].items()}
        print(
            f"warm against baseline: {w:.1f} s vs {b:.1f} s ({100 * (1 - w / b):.0f}% faster); "
            f"metrics to the printed digit equal: {base_rounded == rounded}"
        )
    if a.json:
        pathlib.Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(a.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
