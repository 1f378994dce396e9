"""The project's own error kinds: problems a user fixes (a flag, a file, a folder), not bugs.

The command line (``experiments/main.py``) prints each as one line and exits with
code 2; ``--verbose`` adds the traceback. Every message names the config key,
file or folder at fault and says how to fix it. The readers' ``DatasetError`` and
the backbones' ``WeightsError`` are of this kind too (``USER_ERRORS``).
"""

from __future__ import annotations


class UserError(Exception):
    """Base of the errors a user fixes; the message says how."""


class ConfigError(UserError, ValueError):
    """A config value is invalid or inconsistent (the message names the key)."""


class WorkdirError(UserError):
    """The workdir cannot be used: locked by a running process, not a writable folder, or holding a
    run made with another config."""


class CheckpointError(UserError):
    """No usable checkpoint where one is needed, or one made for another model."""


class TrainingDiverged(UserError, FloatingPointError):
    """The loss or the parameters became NaN or infinite (the message names the step and the batch)."""


def user_errors() -> tuple[type[BaseException], ...]:
    """Every exception type the command line reports as one line (imported lazily: the readers and
    backbones define theirs)."""
    from jaxflow_ad.backbones.weights import WeightsError
    from jaxflow_ad.data import DatasetError

    return (UserError, DatasetError, WeightsError)
