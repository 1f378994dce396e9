"""Guarding a workdir: one run at a time, and only runs of the config its checkpoints were made with.

* :func:`prepare`: the workdir is created, or it is a writable folder; else one
  :class:`~jaxflow_ad.errors.WorkdirError`.
* :class:`WorkdirLock`: an exclusive ``fcntl.flock`` on ``<workdir>/.lock`` held
  for the whole run (process 0 of a multi-host run). A second run in the same
  workdir stops at once with the PID, host and start time of the holder. The
  kernel drops the lock when its process dies, however it dies, so a lock left by
  a killed run is never stale: the next run takes it over and says which PID held it.
* :func:`reconcile_config`: the saved ``config.json`` against the new config,
  before anything is written. Keys that decide what the checkpoints hold (model,
  training, data size and augmentation, seed) must match to train on; keys that
  only change how a trained model is evaluated or where data is read from may
  differ (:data:`FREE_KEYS`). ``--mode=eval`` evaluates with the saved config and
  takes only the free keys from the command line.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import logging
import os
import pathlib
import socket

import ml_collections

from jaxflow_ad.errors import WorkdirError

log = logging.getLogger("jaxflow_ad")

# config keys (or prefixes ending in ".") that may change between runs of one workdir
FREE_KEYS = (
    "eval.",
    "data.root",
    "data.categories",
    "data.feature_cache_memory_mb",
    "data.mvtec3d.cache_dir",
    "data.eyecandies.cache_dir",
    "data.source",
    "data.tfds_dir",
    "train.log_every_steps",
    "train.checkpoint_every_steps",
    "train.prefetch",
    "train.sync_every",
    "compile_cache",
    "parallel_categories",
    "predict.",
)


def prepare(workdir: str | os.PathLike) -> pathlib.Path:
    """``workdir`` as an existing, writable folder (created with its parents when missing)."""
    path = pathlib.Path(workdir).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise WorkdirError(f"--workdir={workdir} is a file, not a folder: pass a folder path") from None
    except NotADirectoryError:
        raise WorkdirError(f"--workdir={workdir}: a part of the path is a file, not a folder") from None
    except PermissionError:
        raise WorkdirError(f"--workdir={workdir} cannot be created: permission denied; pick a writable place") from None
    if not path.is_dir():
        raise WorkdirError(f"--workdir={workdir} is not a folder: pass a folder path")
    if not os.access(path, os.W_OK | os.X_OK):
        raise WorkdirError(f"--workdir={workdir} is not writable by this user; pick a writable folder")
    return path


class WorkdirLock:
    """An exclusive lock on ``<workdir>/.lock`` for the lifetime of a run (a context manager)."""

    def __init__(self, workdir: pathlib.Path):
        self.path = pathlib.Path(workdir) / ".lock"
        self._fd: int | None = None

    def acquire(self) -> WorkdirLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise WorkdirError(
                f"workdir {self.path.parent} is in use by another run ({holder}). Wait for it to finish, stop it, "
                "or use another --workdir."
            ) from None
        previous = _read_holder(fd)
        if previous != "no holder recorded":
            log.info("workdir lock %s taken over from a run that ended (%s)", self.path, previous)
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)  # the next run finds no holder: this one ended normally
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> WorkdirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "null")
    except (ValueError, OSError):
        info = None
    if not isinstance(info, dict):
        return "no holder recorded"
    alive = _pid_alive(int(info.get("pid", -1))) if info.get("host") == socket.gethostname() else None
    state = "" if alive is None else (", running" if alive else ", no longer running")
    return f"PID {info.get('pid')} on {info.get('host')}, started {info.get('started')}{state}"


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def flatten(tree, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists and scalars are leaves)."""
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _free(key: str) -> bool:
    return any(key.startswith(f) if f.endswith(".") else key == f for f in FREE_KEYS)


def config_differences(saved: dict, new: dict) -> dict[str, tuple]:
    """``{key: (saved value, new value)}`` for every key whose value differs (missing: ``"<absent>"``)."""
    a, b = flatten(saved), flatten(new)
    absent = "<absent>"
    return {
        k: (a.get(k, absent), b.get(k, absent)) for k in sorted(set(a) | set(b)) if a.get(k, absent) != b.get(k, absent)
    }


def _has_checkpoints(workdir: pathlib.Path) -> bool:
    return any(p.name.isdigit() for p in workdir.glob("*/checkpoints/*"))


def reconcile_config(
    workdir: pathlib.Path, config: ml_collections.ConfigDict, mode: str, allow_change: bool = False
) -> tuple[ml_collections.ConfigDict, bool]:
    """``(config to run with, whether to write it to config.json)``.

    No saved config, or no checkpoint yet: the new config (written). Train/all with checkpoints:
    every key outside :data:`FREE_KEYS` must equal the saved one, else one WorkdirError listing
    ``key: saved -> new``; the free keys take the new values (written). Eval: the saved config with
    the new values of the free keys only, the other differences logged as ignored (not written).
    ``allow_change`` (``--allow_config_change``): train/all go on with the new config, the
    differences logged and the previous config kept as ``config.<time>.json``.
    """
    path = workdir / "config.json"
    new = json.loads(config.to_json_best_effort())
    if not path.exists() or not _has_checkpoints(workdir):
        return config, True
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise WorkdirError(
            f"{path} is unreadable ({e}) but {workdir} holds checkpoints: the config they were trained with is "
            "unknown. Restore the file, or train into a new --workdir."
        ) from None
    diffs = config_differences(saved, new)
    fixed = {k: v for k, v in diffs.items() if not _free(k)}
    free = {k: v for k, v in diffs.items() if _free(k)}
    if mode in ("eval", "predict", "export"):
        if fixed:
            log.warning(
                "--mode=eval uses the config %s was trained with; these command-line values are ignored: %s",
                workdir,
                "; ".join(f"{k}={b!r} (trained with {a!r})" for k, (a, b) in fixed.items()),
            )
        merged = ml_collections.ConfigDict(saved)
        for k, (_, b) in free.items():
            _set(merged, k, b)
        return merged, False
    lines = "\n".join(f"  {k}: {a!r} -> {b!r}" for k, (a, b) in fixed.items())
    if fixed and allow_change:
        keep = workdir / f"config.{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
        keep.write_text(path.read_text())
        log.warning(
            "resuming %s with a changed config (--allow_config_change; the old one kept as %s):\n%s",
            workdir,
            keep.name,
            lines,
        )
        return config, True
    if fixed:
        raise WorkdirError(
            f"{workdir} holds checkpoints trained with another config; these keys differ (saved -> new):\n{lines}\n"
            "Train into a new --workdir, use the saved values, run --mode=eval to evaluate what is there "
            f"(its config: {path}), or resume with the new values anyway with --allow_config_change."
        )
    return config, True


def _set(cfg: ml_collections.ConfigDict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    node = cfg
    for p in parents:
        if p not in node:
            node[p] = ml_collections.ConfigDict()
        node = node[p]
    if value == "<absent>":
        if leaf in node:
            del node[leaf]
    else:
        node[leaf] = value
