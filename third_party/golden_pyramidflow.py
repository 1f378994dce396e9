"""Golden training trajectories of the official PyramidFlow, for ``tests/models/test_pyramidflow_trajectory.py``.

The one-step golden data (``shared/golden``) proves one training step; this
records what accumulates over many: from the official initial weights, the
official model trains on a fixed sequence of batches (no augmentation, fixed
order) exactly as its ``train.py`` does (Fourier loss of the composed pairwise
squared differences, clip-norm 1, Adam(2e-4, betas (0.5, 0.9), eps 1e-4,
coupled L2 1e-5)); we keep the loss of every step, the final weights and
volume-norm running means (non-zero by then), the evaluation-mode latent
template over the training pool and the anomaly maps of test images. Plain
autograd only: the official memory-saving path updates the running means three
times per step, a quirk the port does not copy.

    git clone https://github.com/gasharper/PyramidFlow /path/PyramidFlow
    git -C /path/PyramidFlow show 7db456f:autoFlow.py > /path/PyramidFlow/autoFlow.py
    .venv-torch/bin/python -m third_party.golden_pyramidflow --official-dir /path/PyramidFlow \
        --out tests/data/golden/pyramidflow_trajectory.npz

Nothing of the official code is copied: it is imported from the checkout.
Inputs come from :func:`trajectory_inputs`, which the test calls too.
"""

from __future__ import annotations

import argparse
import os
import sys
import types

import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
# Small enough for the default test suite, large enough that every block kind runs.
SETTINGS = {"size": 32, "channels": 8, "levels": 3, "stacks": 2, "ksize": 5, "batch": 2, "steps": 100, "pool": 16}
VOLUME_NORMS = {"CVN": (0, 1), "SVN": (0, 2, 3)}


def trajectory_inputs(size: int = 32, pool: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    """NHWC float32 images in [0, 1]: a pool of smooth textures (training) and the first four of
    them with a bright square (test)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    f = rng.uniform(1.0, 3.0, (pool, 1, 1, 3))
    ph = rng.uniform(0, 2 * np.pi, (pool, 1, 1, 3))
    base = 0.5 + 0.25 * np.sin(2 * np.pi * f * (xx[None, ..., None] + 0.5 * yy[None, ..., None]) + ph)
    train = np.clip(base + 0.05 * rng.standard_normal((pool, size, size, 3)), 0, 1).astype(np.float32)
    test = train[:4].copy()
    test[:, size // 4 : size // 2, size // 2 : 3 * size // 4] = 0.95
    return {"train": train, "test": test}


def batch_rows(step: int, batch: int, pool: int) -> np.ndarray:
    """The pool rows of training step ``step``: a fixed cyclic order."""
    return (np.arange(batch) + step * batch) % pool


def _import_official(path: str):
    for f in ("model.py", "util.py", "autoFlow.py"):
        if not os.path.isfile(os.path.join(path, f)):
            sys.exit(f"--official-dir {path}: {f} missing (autoFlow.py: `git show 7db456f:autoFlow.py`)")
    try:
        import albumentations  # noqa: F401
    except ImportError:  # only the dataset class uses it
        sys.modules["albumentations"] = types.ModuleType("albumentations")
    sys.path.insert(0, path)
    import model
    import util

    return model, util


def official_train_step(flow, opt, loss_fn, x, clip_norm: float = 1.0) -> float:
    """One step as the official ``train.py`` takes it: Fourier loss of the composed pairwise squared
    latent differences, backward, clip the gradient norm, Adam. The official VolumeNorm keeps
    autograd history in its running means across steps; they are detached (values unchanged)."""
    import torch

    opt.zero_grad()
    loss = torch.fft.fft2(flow.pyramid.compose_pyramid(loss_fn(flow(x))).mean(1)).abs().mean()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(flow.parameters(), max_norm=clip_norm)
    opt.step()
    for m in flow.modules():
        if torch.is_tensor(getattr(m, "running_mean", None)):
            m.running_mean = m.running_mean.detach()
    return float(loss.detach())


def run_official(model, util, vn: str, s=SETTINGS) -> dict[str, np.ndarray]:
    import torch

    torch.manual_seed(0)
    np.random.seed(0)  # the official LU init draws from NumPy's global generator
    flow = model.PyramidFlow(0, s["channels"], s["levels"], s["stacks"], s["ksize"], VOLUME_NORMS[vn], False)
    inputs = trajectory_inputs(s["size"], s["pool"])

    def to_torch(x):
        return torch.from_numpy(np.ascontiguousarray(((x - IMAGENET_MEAN) / IMAGENET_STD).transpose(0, 3, 1, 2)))

    out = {f"{vn}/sd0/{k}": v.detach().numpy().copy() for k, v in flow.state_dict().items()}
    opt = torch.optim.Adam(flow.parameters(), lr=2e-4, eps=1e-4, weight_decay=1e-5, betas=(0.5, 0.9))
    loss_fn = util.BatchDiffLoss(s["batch"], p=2)
    losses = []
    flow.train()
    for step in range(s["steps"]):
        x = to_torch(inputs["train"][batch_rows(step, s["batch"], s["pool"])])
        losses.append(official_train_step(flow, opt, loss_fn, x))
    out[f"{vn}/loss"] = np.asarray(losses, np.float64)
    out.update({f"{vn}/sd1/{k}": v.detach().numpy().copy() for k, v in flow.state_dict().items()})
    flow.eval()
    with torch.no_grad():
        z = flow(to_torch(inputs["train"]))
        template = [l.mean(0, keepdim=True) for l in z]
        zt = flow(to_torch(inputs["test"]))
        amap = flow.pyramid.compose_pyramid([(a - t).abs() for a, t in zip(zt, template)]).mean(1)
    for j, t in enumerate(template):
        out[f"{vn}/tmpl_l{j}"] = t.numpy().transpose(0, 2, 3, 1).copy()
    out[f"{vn}/amap"] = amap.numpy()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official-dir", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    import torch

    torch.set_num_threads(1)  # one thread: reductions in a fixed order
    model, util = _import_official(a.official_dir)
    out = {"settings": np.asarray(repr(SETTINGS)), "torch": np.asarray(torch.__version__)}
    for vn in VOLUME_NORMS:
        out.update(run_official(model, util, vn))
        print(vn, "loss", out[f"{vn}/loss"][[0, 1, 49, 99]])
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    np.savez_compressed(a.out, **out)
    print("wrote", a.out, os.path.getsize(a.out), "bytes")


if __name__ == "__main__":
    main()
