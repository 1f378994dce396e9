"""Seed study: how much PyramidFlow's results depend on the seed, the official code beside the project.

Both train the quick-start setting (``configs/pyramidflow.py``: 128x128, C=16, L=4, D=2, kernel 7,
CVN, batch 4, 6 epochs, flips/rot90 for textures) on built-in categories with thin defects, for
several seeds each, and are scored by the same metrics (``jaxflow_ad.metrics``: native-resolution
AUROC and AUPRO@0.3, per defect kind). The official code is imported from a checkout the user
supplies and run by a Python with torch; it gets the project's reader, batch order and
augmentation draws for its seed, so that only the model code and its random initialisation differ.

    .venv/bin/python benchmarks/pyramidflow_seed_study.py --seeds 0,1,2,3,4 --categories weave,coin \
        --official-dir /path/PyramidFlow --torch-python .venv-torch/bin/python --workdir /tmp/seed_study

Prints mean and standard deviation over the seeds per category, defect kind and metric, and writes
every run's numbers to ``<workdir>/study.json``. Extra ``--config.*`` overrides for the project's
runs (a remedy under study, say) go after ``--``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
KEYS = ("image_auroc", "pixel_auroc", "aupro")


def _official_run(official_dir: str, seed: int, category: str) -> dict:
    """One training run of the official model on a built-in category (called under the torch Python)."""
    import torch

    sys.path.insert(0, str(ROOT))
    from configs import pyramidflow as pf_config
    from jaxflow_ad import data, metrics
    from third_party.golden_pyramidflow import IMAGENET_MEAN, IMAGENET_STD, _import_official, official_train_step

    torch.set_num_threads(2)
    model, util = _import_official(official_dir)
    cfg = pf_config.get_config()
    m, t = cfg.model, cfg.train
    size = int(cfg.data.image_size)
    root = data.ensure_builtin()
    train = data.load_split(root, category, "train", size)
    test = data.load_split(root, category, "test", size)
    torch.manual_seed(seed)
    np.random.seed(seed)  # the official LU init draws from NumPy's global generator
    flow = model.PyramidFlow(0, m.channels, m.levels, m.stacks, m.ksize, (0, 1), False)
    o = t.optimizer
    opt = torch.optim.Adam(flow.parameters(), lr=o.lr, eps=o.eps, weight_decay=o.weight_decay, betas=(o.b1, o.b2))
    bs = int(t.batch_size)
    loss_fn = util.BatchDiffLoss(bs, p=2)

    def to_torch(u8):
        x = u8.astype(np.float32) / 255.0
        return torch.from_numpy(np.ascontiguousarray(((x - IMAGENET_MEAN) / IMAGENET_STD).transpose(0, 3, 1, 2)))

    n = len(train)
    spe = n // bs
    augment = data.is_texture(category)
    t0 = time.perf_counter()
    flow.train()
    for epoch in range(int(t.epochs)):
        order = np.random.default_rng([seed, 0, epoch]).permutation(n)
        for i in range(spe):
            rng = np.random.default_rng([seed, 0, epoch * spe + i])
            imgs = train.images[order[i * bs : (i + 1) * bs]]
            if augment:
                imgs = data.flip_rot90(imgs, rng)
            official_train_step(flow, opt, loss_fn, to_torch(imgs), o.clip_norm)
    train_s = time.perf_counter() - t0
    flow.eval()
    with torch.no_grad():
        sums = None
        for i in range(0, n, 8):
            z = flow(to_torch(train.images[i : i + 8]))
            s = [l.sum(0, keepdim=True) for l in z]
            sums = s if sums is None else [a + b for a, b in zip(sums, s)]
        template = [s / n for s in sums]
        maps = []
        for i in range(0, len(test), 8):
            z = flow(to_torch(test.images[i : i + 8]))
            maps.append(flow.pyramid.compose_pyramid([(a - b).abs() for a, b in zip(z, template)]).mean(1).numpy())
    maps = np.concatenate(maps)
    scores = maps.reshape(len(maps), -1).max(1)
    res = metrics.evaluate(test.labels, scores, test.masks, maps)
    res["per_defect"] = metrics.evaluate_by_defect(test.labels, scores, test.masks, maps, test.defect_types)
    res["train_time_s"] = train_s
    return res


def _ours(seed: int, categories: str, workdir: pathlib.Path, overrides: list[str]) -> dict:
    run = workdir / f"ours_s{seed}"
    cmd = [sys.executable, "-m", "experiments.main", "--config=configs/pyramidflow.py", f"--workdir={run}"]
    cmd += [f"--config.seed={seed}", f"--config.data.categories={categories}", *overrides]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    return {c: json.loads((run / c / "metrics.json").read_text()) for c in categories.split(",")}


def _official(seed: int, categories: str, a) -> dict:
    out = {}
    for c in categories.split(","):
        cmd = [a.torch_python, __file__, "--_official", f"{seed}:{c}", "--official-dir", a.official_dir]
        proc = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True)
        out[c] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def summarize(runs: dict) -> str:
    """``runs[impl][seed][category]`` -> a markdown table of mean +- sd over seeds."""
    lines = ["| category | defect | metric | " + " | ".join(f"{i} mean +- sd" for i in runs) + " |"]
    lines.append("|" + "---|" * (3 + len(runs)))
    first = next(iter(runs.values()))
    seed0 = next(iter(first.values()))
    for cat in seed0:
        kinds = ["(all)"] + sorted(seed0[cat]["per_defect"])
        for kind in kinds:
            for k in KEYS:
                cells = []
                for impl in runs.values():
                    vals = [(r[cat] if kind == "(all)" else r[cat]["per_defect"][kind])[k] * 100 for r in impl.values()]
                    cells.append(f"{np.mean(vals):.1f} +- {np.std(vals, ddof=1) if len(vals) > 1 else 0:.1f}")
                lines.append(f"| {cat} | {kind} | {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--categories", default="weave,coin")
    p.add_argument("--official-dir", default="")
    p.add_argument("--torch-python", default=".venv-torch/bin/python")
    p.add_argument("--workdir", default="/tmp/pyramidflow_seed_study")
    p.add_argument("--_official", default="", help=argparse.SUPPRESS)
    a, overrides = p.parse_known_args()
    overrides = [o for o in overrides if o != "--"]
    if a._official:
        seed, cat = a._official.split(":")
        print(json.dumps(_official_run(a.official_dir, int(seed), cat)))
        return
    workdir = pathlib.Path(a.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    runs: dict = {"ours": {}}
    if a.official_dir:
        runs["official"] = {}
    for seed in [int(s) for s in a.seeds.split(",")]:
        runs["ours"][seed] = _ours(seed, a.categories, workdir, overrides)
        if a.official_dir:
            runs["official"][seed] = _official(seed, a.categories, a)
        (workdir / "study.json").write_text(json.dumps(runs, indent=1))
        print(f"seed {seed} done", flush=True)
    print(summarize(runs))


if __name__ == "__main__":
    main()
