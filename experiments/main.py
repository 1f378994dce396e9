"""Command line: ``python -m experiments.main --config=configs/pyramidflow.py --workdir=runs/pf``.

Flags: ``--config`` (an ml_collections config file, ``path.py:variant`` for a
variant, ``--config.x.y=value`` to override any value), ``--workdir``,
``--mode`` (train, eval or all). Multi-host: set ``--coordinator``,
``--num_processes`` and ``--process_id`` (or the environment variables
``jax.distributed.initialize`` reads).
"""

import logging

import jax
from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from jaxflow_ad import engine

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/pyramidflow.py[:smoke].")
flags.DEFINE_string("workdir", "runs/default", "Where checkpoints, logs and reports go.")
flags.DEFINE_enum("mode", "all", list(engine.MODES), "train, eval, or all (train then eval).")
flags.DEFINE_string("coordinator", None, "host:port of process 0, for multi-host runs.")
flags.DEFINE_integer("num_processes", None, "Number of processes, for multi-host runs.")
flags.DEFINE_integer("process_id", None, "This process' index, for multi-host runs.")
flags.mark_flags_as_required(["config"])


def main(argv):
    del argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", force=True)
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every file it writes at INFO
    if FLAGS.coordinator:
        jax.distributed.initialize(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id)
    engine.run(FLAGS.config, FLAGS.workdir, FLAGS.mode)


if __name__ == "__main__":
    app.run(main)
