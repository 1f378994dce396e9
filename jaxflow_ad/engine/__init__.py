"""Training loop, device mesh and data parallelism, checkpoints, writers, evaluation, reports."""

from jaxflow_ad.engine.loop import MODES, resolve_data, run

__all__ = ["MODES", "resolve_data", "run"]
