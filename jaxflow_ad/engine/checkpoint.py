"""orbax checkpoints of a method's :class:`~jaxflow_ad.models.base.State` in ``workdir``.

Only the training state is saved (step, params, model_state, opt_state);
statistics fitted after training are cheap to recompute and are not part of
it. orbax coordinates several processes itself (process 0 writes metadata).
"""

from __future__ import annotations

import pathlib

import jax
import orbax.checkpoint as ocp

from jaxflow_ad.models.base import State


class Checkpointer:
    def __init__(self, directory: str | pathlib.Path, max_to_keep: int = 2):
        self.directory = pathlib.Path(directory).absolute()
        self.manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: State, *, force: bool = False) -> None:
        state = state.replace(stats={})
        self.manager.save(step, args=ocp.args.StandardSave(state), force=force)

    def restore(self, target: State, step: int | None = None) -> State:
        step = self.latest_step() if step is None else step
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target.replace(stats={}))
        restored = self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
        return restored.replace(stats=target.stats)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
