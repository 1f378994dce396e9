"""orbax checkpoints of a method's :class:`~jaxflow_ad.models.base.State` in ``workdir``.

Each step holds two items: ``state`` (step, params, model_state, opt_state,
restored into the structure of a target so that optax named tuples come back)
and, once statistics were fitted, ``stats`` (template, memory bank; restored as
saved: dicts, lists and arrays). A frozen feature extractor is not part of the
state and never written. orbax coordinates several processes itself (process 0
writes metadata).

Guards (issue 17): ``model.json`` beside the steps records the method and every
parameter's shape, and a model of another shape is refused with the differing
parameters named (:meth:`Checkpointer.check_model`); a non-finite state is never
written (:meth:`Checkpointer.save`); a step that cannot be read is moved aside to
``checkpoints.broken/`` (kept, not deleted), reported, and the previous step is
restored instead (:meth:`Checkpointer.restore_newest`).
"""

from __future__ import annotations

import json
import logging
import pathlib
import threading
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxflow_ad.errors import CheckpointError, TrainingDiverged
from jaxflow_ad.models.base import State

log = logging.getLogger("jaxflow_ad")


def model_signature(method_name: str, state: State) -> dict:
    """``{"method": name, "params": {path: [shape, dtype]}}``: what a checkpoint must fit."""
    flat = jax.tree_util.tree_flatten_with_path(state.params)[0]
    params = {jax.tree_util.keystr(k): [list(np.shape(v)), str(jnp.result_type(v))] for k, v in flat}
    return {"method": method_name, "params": params}


def all_finite(tree) -> bool:
    """Whether every floating-point leaf of ``tree`` is finite (one device reduction per leaf)."""
    leaves = [x for x in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
    return all(bool(jnp.all(jnp.isfinite(x))) for x in leaves)


# orbax numbers the saves of a process with one global operation id, which its asynchronous part reads
# back: two managers saving at once in one process (categories in threads, parallel_categories) would wait
# for each other's signals until orbax times out. A save therefore first waits for another manager's
# save still in flight; a manager's own saves are ordered by orbax.
_SAVE_LOCK = threading.Lock()
_IN_FLIGHT: list = [None]


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

    def check_model(self, signature: dict) -> None:
        """Refuse checkpoints of another model. ``model.json`` records the signature with the first save
        (a folder of steps without it, from an older version, is not checked)."""
        self._signature = signature
        path = self.directory / "model.json"
        if not path.exists():
            return
        saved = json.loads(path.read_text())
        if saved == signature:
            return
        if saved.get("method") != signature["method"]:
            what = f"method {saved.get('method')!r}, not {signature['method']!r}"
        else:
            a, b = saved.get("params", {}), signature["params"]
            diff = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
            shown = "; ".join(f"{k}: {a.get(k, 'absent')} -> {b.get(k, 'absent')}" for k in diff[:6])
            what = f"{len(diff)} parameters of another shape ({shown}{'; ...' if len(diff) > 6 else ''})"
        raise CheckpointError(
            f"the checkpoints in {self.directory} were made for another model: {what}. Train into a new "
            "--workdir, or run with the config they were trained with (config.json beside them)."
        )

    def save(self, step: int, state: State, *, force: bool = False) -> None:
        """Save ``state`` as ``step``; a state with a NaN or infinite value is refused (TrainingDiverged)."""
        if not all_finite((state.params, state.model_state, state.opt_state)):
            raise TrainingDiverged(
                f"the state at step {step} holds NaN or infinite values; not saved (the last good checkpoint in "
                f"{self.directory} is kept). Lower the learning rate or check the data."
            )
        path = self.directory / "model.json"
        if getattr(self, "_signature", None) and not path.exists() and jax.process_index() == 0:
            from jaxflow_ad.engine.report import write_text_atomic

            write_text_atomic(path, json.dumps(self._signature, indent=1, sort_keys=True))
        items = {"state": ocp.args.StandardSave(state.replace(stats={}))}
        if jax.tree_util.tree_leaves(state.stats):
            items["stats"] = ocp.args.StandardSave(state.stats)
        with _SAVE_LOCK:
            other = _IN_FLIGHT[0]
            if other is not None and other is not self.manager:
                other.wait_until_finished()
            self.manager.save(step, args=ocp.args.Composite(**items), force=force)
            _IN_FLIGHT[0] = self.manager

    def has_stats(self, step: int) -> bool:
        return (self.directory / str(step) / "stats").is_dir()

    def restore(self, target: State, step: int | None = None) -> State:
        """The state saved at ``step`` (default: the latest) in the structure of ``target``;
        its statistics as saved, or ``{}`` when none were."""
        step = self.latest_step() if step is None else step
        if not (self.directory / str(step) / "state").is_dir():
            raise CheckpointError(
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

    def restore_newest(self, make_target: Callable[[int], State]) -> tuple[State, int] | None:
        """The newest readable step as ``(state, step)`` (``None`` without steps); ``make_target(step)``
        gives the structure to restore into. A step that fails to restore is moved to
        ``<checkpoints>.broken/<step>-<time>`` (process 0), reported, and the one before it is tried."""
        broken: list[str] = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                state = self.restore(make_target(step), step)
            except CheckpointError:
                raise
            except Exception as e:  # noqa: BLE001 (whatever orbax/TensorStore raise for a damaged step)
                first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
                dest = self.directory.parent / f"{self.directory.name}.broken" / f"{step}-{int(time.time())}"
                log.error("checkpoint %s cannot be read (%s); moved to %s", self.directory / str(step), first, dest)
                if jax.process_index() == 0:
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    (self.directory / str(step)).rename(dest)
                self.manager.reload()
                broken.append(str(dest))
                continue
            if broken:
                log.warning("restored step %d instead; the unreadable steps are kept in %s", step, broken)
            return state, step
        if broken:
            log.warning("no readable checkpoint is left in %s: training starts afresh", self.directory)
        return None

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        with _SAVE_LOCK:
            self.manager.close()
            if _IN_FLIGHT[0] is self.manager:
                _IN_FLIGHT[0] = None
