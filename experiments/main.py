"""Command line: ``python -m experiments.main --config=configs/pyramidflow.py --workdir=runs/pf``.

Flags: ``--config`` (an ml_collections config file, ``path.py:variant`` for a
variant, ``--config.x.y=value`` to override any value), ``--workdir``,
``--mode`` (train, eval or all), ``--verbose``. Multi-host: set ``--coordinator``,
``--num_processes`` and ``--process_id`` (or the environment variables
``jax.distributed.initialize`` reads).

Exit codes: 0 done; 2 a problem the user fixes (a flag, a config value, a file,
the workdir): one line ``error: ...`` naming it and the fix, the traceback only
with ``--verbose``; 75 a peer process of a multi-process run was lost (one line
names it; a rerun resumes from the latest checkpoint); 1 anything else (a bug:
the traceback is printed).
"""

import logging
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/pyramidflow.py[:smoke].")
flags.DEFINE_string("workdir", "runs/default", "Where checkpoints, logs and reports go.")
flags.DEFINE_enum(
    "mode",
    "all",
    ["train", "eval", "all", "predict", "export"],
    "train, eval, all (train then eval), predict (new images) or export (the scorer, StableHLO).",
)
flags.DEFINE_bool("verbose", False, "Print the traceback of errors the user can fix, too.")
flags.DEFINE_bool(
    "allow_config_change", False, "Resume a workdir whose checkpoints were trained with other settings (recorded)."
)
flags.DEFINE_string("coordinator", None, "host:port of process 0, for multi-host runs.")
flags.DEFINE_integer("num_processes", None, "Number of processes, for multi-host runs.")
flags.DEFINE_integer("process_id", None, "This process' index, for multi-host runs.")
flags.DEFINE_float("peer_timeout_s", 30.0, "Multi-host: a process silent this long is declared lost (exit 75).")
flags.mark_flags_as_required(["config"])


def _fail(message: str, exc: BaseException | None = None) -> None:
    if exc is not None and "--verbose" in sys.argv:
        import traceback

        traceback.print_exception(exc, file=sys.stderr)
    hint = "" if "--verbose" in sys.argv else " (--verbose shows the traceback)"
    print(f"error: {message}{hint}", file=sys.stderr, flush=True)
    sys.exit(2)


def _message(exc: BaseException) -> str:
    """The text of ``exc`` without the quoting ``KeyError``/``AttributeError`` add (ml_collections'
    "Did you mean" suggestion stays readable)."""
    text = str(exc.args[0]) if exc.args else str(exc)
    if text[:1] in "'\"" and text[-1:] == text[:1]:
        text = text[1:-1]
    lines = [part.strip() for part in text.replace("\\n", "\n").replace("\\'", "'").splitlines() if part.strip()]
    if len(lines) > 2:  # a wrapped traceback or a list of attempts: its last line says what failed
        return lines[-1]
    return " ".join(lines)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, but a bad flag, config file or ``--config.key`` override is one line and
    exit code 2 (absl and ml_collections would raise from inside the parser)."""
    try:
        rest = FLAGS(argv)
        list(FLAGS.config.keys())  # a config file that failed to load raises on first use: here
        return rest
    except flags.Error as e:
        _fail(_message(e), e)
    except (AttributeError, KeyError, ValueError, TypeError, OSError, SyntaxError) as e:
        text = _message(e)
        overrides = [a.split("=", 1)[0] for a in argv[1:] if a.startswith("--config.")]
        named = [o for o in overrides if o.rsplit(".", 1)[-1] in text]
        where = ", ".join(named) if named else "--config"
        _fail(f"bad {where}: {text}", e)
    return []


def main(argv):
    del argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", force=True)
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every file it writes at INFO
    from jaxflow_ad import engine
    from jaxflow_ad.engine import distributed
    from jaxflow_ad.errors import user_errors

    # guard: in a multi-process run every exit (errors included) skips JAX's shutdown barrier, and a lost
    # peer is one line and exit code 75, so that no process waits for a dead one
    with distributed.guard():
        try:
            distributed.initialize(
                FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id, timeout_s=FLAGS.peer_timeout_s
            )
            engine.run(FLAGS.config, FLAGS.workdir, FLAGS.mode, allow_config_change=FLAGS.allow_config_change)
        except user_errors() as e:
            _fail(str(e), e)


if __name__ == "__main__":
    from jaxflow_ad.hostmem import reexec_with_hugepage_malloc

    reexec_with_hugepage_malloc()  # before JAX is imported or anything allocated
    app.run(main, flags_parser=parse_flags)
