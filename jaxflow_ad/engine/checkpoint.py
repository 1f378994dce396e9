"""orbax checkpoints of a method's :class:`~jaxflow_ad.models.base.State` in ``workdir``.

Each step holds two items: ``state`` (step, params, model_state, opt_state,
restored into the structure of a target so that optax named tuples come back)
and, once statistics were fitted, ``stats`` (template, memory bank; restored as
saved: dicts, lists and arrays). A frozen feature extractor is not part of the
state and never written. orbax coordinates several processes itself (process 0
writes metadata).
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
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
            item_names=("state", "stats"),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: State, *, force: bool = False) -> None:
        items = {"state": ocp.args.StandardSave(state.replace(stats={}))}
        if jax.tree_util.tree_leaves(state.stats):
            items["stats"] = ocp.args.StandardSave(state.stats)
        self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    def has_stats(self, step: int) -> bool:
        return (self.directory / str(step) / "stats").is_dir()

    def restore(self, target: State, step: int | None = None) -> State:
        """The state saved at ``step`` (default: the latest) in the structure of ``target``;
        its statistics as saved, or ``{}`` when none were."""
        step = self.latest_step() if step is None else step
        if not (self.directory / str(step) / "state").is_dir():
            raise ValueError(
                f"checkpoint {self.directory / str(step)} has no 'state' item: it was written by a jaxflow_ad "
                "from before the method contract (or by another program). Train into a new --workdir, or move "
                f"{self.directory} away to start this one afresh."
            )
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target.replace(stats={}))
        items = {"state": ocp.args.StandardRestore(abstract)}
        if self.has_stats(step):
            items["stats"] = ocp.args.StandardRestore()
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        return restored.state.replace(stats=restored.stats if "stats" in items else {})

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
