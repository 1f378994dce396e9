"""Time the official PyTorch PyramidFlow on this machine, beside ``pyramidflow_speed.py``.

The anchors in ``shared/notes/pyramidflow.md`` were measured on another VM of
the same kind; VMs differ by 10-20 % in conv throughput from one to the next
(and one VM from hour to hour), so a claim "N times faster" is only sound
against the official code timed on the same machine, in the same minutes.
This script does that: it imports the official ``model.py``/``util.py`` and
the deleted ``autoFlow.py`` (restore it from commit 7db456f) from a checkout
the user supplies, and times what ``pyramidflow_speed.py`` times, with the same
inputs and settings (FNF, 256x256, C=16, L=4, k=7, CVN; train batch 2 with the
official loss, Adam and gradient clipping as in ``train.py``; inference batch
4 with the anomaly map). Nothing is downloaded, nothing of the official code
is copied here.

    git clone https://github.com/gasharper/PyramidFlow /path/PyramidFlow   # elsewhere
    git -C /path/PyramidFlow show 7db456f:autoFlow.py > /path/PyramidFlow/autoFlow.py
    .venv-torch/bin/python benchmarks/pyramidflow_official_torch.py --official-dir /path/PyramidFlow

Needs torch, torchvision, scipy, scikit-image and scikit-learn (``make
torch-env``); ``albumentations`` (used by the official dataset class only) is
replaced by an empty module when missing. Each row runs in a fresh subprocess
(peak RSS of its own); 2 threads (``--threads``), like the anchors.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import types

import numpy as np
from memory import hwm_mb, reset_peak_rss  # noqa: E402  (benchmarks/ is on sys.path)

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1)


def _import_official(path: str):
    if not os.path.isfile(os.path.join(path, "model.py")):
        sys.exit(f"--official-dir {path}: no model.py there; pass a checkout of gasharper/PyramidFlow")
    if not os.path.isfile(os.path.join(path, "autoFlow.py")):
        sys.exit(
            f"--official-dir {path}: autoFlow.py is missing (deleted upstream); restore it with "
            f"`git -C {path} show 7db456f:autoFlow.py > {path}/autoFlow.py`"
        )
    try:
        import albumentations  # noqa: F401
    except ImportError:  # only the dataset class uses it; the model and loss do not
        sys.modules["albumentations"] = types.ModuleType("albumentations")
    sys.path.insert(0, path)
    import model
    import util

    return model, util


def _row(
    official: str, kind: str, depth: int, savemem: bool, steps: int, size: int, threads: int, device: str = "cpu"
) -> dict:
    import torch

    torch.set_num_threads(threads)
    dev = torch.device(device)
    model, util = _import_official(official)
    torch.manual_seed(0)
    np.random.seed(0)
    flow = model.PyramidFlow(0, 16, 4, depth, 7, (0, 1), savemem).to(dev)
    batch = 2 if kind == "train" else 4
    x = np.random.default_rng(0).random((batch, 3, size, size), dtype=np.float32)
    images = torch.from_numpy((x - IMAGENET_MEAN) / IMAGENET_STD).to(dev)
    if kind == "train":
        flow.train()
        opt = torch.optim.Adam(flow.parameters(), lr=2e-4, eps=1e-4, weight_decay=1e-5, betas=(0.5, 0.9))
        loss_fn = util.BatchDiffLoss(batch, p=2)

        def step():
            opt.zero_grad()
            diffes = loss_fn(flow(images))
            loss = torch.fft.fft2(flow.pyramid.compose_pyramid(diffes).mean(1)).abs().mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(flow.parameters(), max_norm=1.0)
            opt.step()
            for m in flow.modules():  # the official VolumeNorm keeps autograd history across steps
                if hasattr(m, "running_mean") and torch.is_tensor(m.running_mean):
                    m.running_mean = m.running_mean.detach()
            return float(loss)
    else:
        flow.eval()
        template = [torch.zeros(1, 16, size // 2**i, size // 2**i, device=dev) for i in range(4)]

        def step():
            with torch.no_grad():
                z = flow(images)
                amap = flow.pyramid.compose_pyramid([(a - t).abs() for a, t in zip(z, template)]).mean(1)
                return float(amap.amax((-1, -2)).sum())

    times = []
    step_peak = float("nan")
    for i in range(steps + 1):  # the first call warms up
        if i == 1 and dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        elif i == 1 and reset_peak_rss():
            step_peak = 0.0
        t0 = time.perf_counter()
        step()  # float(loss) waits for the device
        times.append(time.perf_counter() - t0)
    if dev.type == "cuda":
        step_peak = torch.cuda.max_memory_allocated() / 2**20
    times = times[1:]
    med = float(np.median(times))
    return {
        "kind": kind,
        "depth": depth,
        "savemem": savemem,
        "batch": batch,
        "median_s": med,
        "min_s": float(np.min(times)),
        "images_per_s": batch / med,
        "step_peak_mb": hwm_mb() if step_peak == 0.0 else step_peak,
        "threads": threads,
        "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
        "torch": torch.__version__,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official-dir", required=True, help="checkout of gasharper/PyramidFlow (+ autoFlow.py)")
    p.add_argument("--depths", default="4")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="torch device: cpu or cuda (peak memory: RSS or CUDA peak)")
    p.add_argument("--json", default="")
    p.add_argument("--_row", default="", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a._row:
        kind, depth, mem = a._row.split(":")
        print(json.dumps(_row(a.official_dir, kind, int(depth), mem == "1", a.steps, a.size, a.threads, a.device)))
        return
    _import_official(a.official_dir)  # fail early, with the fix, on a bad checkout
    print(f"# official PyramidFlow (torch), device {a.device}, {a.threads} threads; load average {os.getloadavg()}")
    print(f"{'kind':6} {'D':>2} {'savemem':>7} {'batch':>5} {'median s':>9} {'min s':>7} {'img/s':>7} {'step MB':>8}")
    rows = []
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    for d in [int(v) for v in a.depths.split(",")]:
        for kind, mem in (("train", 0), ("train", 1), ("infer", 0)):
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    f"--_row={kind}:{d}:{mem}",
                    f"--steps={a.steps}",
                    f"--size={a.size}",
                    f"--threads={a.threads}",
                    f"--official-dir={a.official_dir}",
                    f"--device={a.device}",
                ],
                capture_output=True,
                text=True,
                env=env,
            )
            if out.returncode:
                print(f"{kind:6} {d:>2} {mem:>7} FAILED: {out.stderr[-500:]}")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(r)
            print(
                f"{kind:6} {d:>2} {'on' if mem else 'off':>7} {r['batch']:>5} {r['median_s']:>9.3f} "
                f"{r['min_s']:>7.3f} {r['images_per_s']:>7.2f} {r['step_peak_mb']:>8.0f}",
                flush=True,
            )
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
