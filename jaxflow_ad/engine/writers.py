"""Scalar logging: TensorBoard event files and a JSON-lines file, process 0 only.

clu's writers need TensorFlow; when it is not installed, tensorboardX (no
TensorFlow) writes the event files instead. Nothing here requires TensorFlow.
"""

from __future__ import annotations

import json
import pathlib
import time

import jax
import numpy as np


def _tensorboard_writer(logdir: pathlib.Path):
    try:
        import tensorflow  # noqa: F401  (clu's writers need it)
        from clu import metric_writers

        return "clu", metric_writers.create_default_writer(str(logdir), just_logging=False)
    except Exception:  # TensorFlow absent or broken: the TF-free writer
        from tensorboardX import SummaryWriter

        return "tensorboardX", SummaryWriter(str(logdir))


class ScalarWriter:
    """``write(step, {name: value})`` to ``<workdir>/tb/<tag>`` and ``<workdir>/log.jsonl``."""

    def __init__(self, workdir: str | pathlib.Path, tag: str):
        self.enabled = jax.process_index() == 0
        self.tag = tag
        if not self.enabled:
            return
        workdir = pathlib.Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        self.kind, self._tb = _tensorboard_writer(workdir / "tb" / tag)
        self._jsonl = open(workdir / "log.jsonl", "a", buffering=1)  # noqa: SIM115 (closed in close())

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        scalars = {k: float(v) for k, v in scalars.items()}
        if self.kind == "clu":
            self._tb.write_scalars(step, scalars)
        else:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)
        self._jsonl.write(json.dumps({"time": time.time(), "tag": self.tag, "step": step, **scalars}) + "\n")

    def write_images(self, step: int, images: dict[str, np.ndarray]) -> None:
        """uint8 ``[H, W, 3]`` images to TensorBoard (e.g. a few heatmap panels per category)."""
        if not self.enabled or not images:
            return
        if self.kind == "clu":
            self._tb.write_images(step, {k: np.asarray(v)[None] for k, v in images.items()})
        else:
            for k, v in images.items():
                self._tb.add_image(k, np.asarray(v), step, dataformats="HWC")

    def close(self) -> None:
        if self.enabled:
            self._tb.flush()
            self._tb.close()
            self._jsonl.close()
