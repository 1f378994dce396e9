"""One process of a multi-process run, started by test_multiprocess.py (``JAX_PLATFORMS=cpu``, 1 device each).

``python tests/engine/mp_worker.py --port P --num_processes N --process_id I --out F.npz --steps S``
trains the first stage of the toy method (tests/engine/toy_method.py) for ``S`` steps on a
fixed global batch of 4 samples through the engine's mesh code (``parallel.global_batch``
feeds each process its own rows), then saves the final parameters and every step's metrics
to ``F.npz``. With ``--num_processes 1`` it is the one-process reference.

For the lost-peer tests: ``--sleep_s`` pauses after every step, ``--host_after K`` makes the
process spend a long time on the host after step ``K`` (no collective), ``--fail_after K``
makes it raise after step ``K``, ``--exit_after K`` makes it ``sys.exit(2)``, ``--linger_s``
keeps it on the host after saving, and ``--timeout_s`` is the watchdog's timeout
(:func:`jaxflow_ad.engine.distributed.initialize`). Each step prints ``STEP k`` on stdout.
"""

import argparse
import sys
import time

import jax
import numpy as np

from jaxflow_ad.engine import distributed, parallel
from tests.engine import toy_method

GLOBAL_BATCH = 4


def global_batch_data() -> dict:
    """The same host batch in every process: toy samples with random stand-in extractor features."""
    rng = np.random.default_rng(7)
    split = toy_method._split("toy", "train")
    batch = split.take(np.arange(GLOBAL_BATCH))
    batch["features"] = {"conv": rng.normal(size=(GLOBAL_BATCH, 8, 8, 4)).astype(np.float32)}
    return batch


def train(args) -> None:
    config = toy_method.get_config()
    method = toy_method.ToyTwoStage(config)
    stage = method.stages[0]  # "align": adam on params["a"], host-side flips and rot90
    mesh = parallel.make_mesh()
    assert mesh.size == args.num_processes, mesh
    host = global_batch_data()
    state = method.init(jax.random.PRNGKey(0), jax.tree_util.tree_map(lambda v: v[:1], host))
    state = parallel.to_replicated(mesh, stage.init_opt(state, 1))
    step_fn = parallel.jit_train_step(mesh, stage.train_step(1))
    key = jax.random.PRNGKey(config.seed)
    metrics = []
    for step in range(args.steps):
        batch = stage.prepare_batch(dict(host), np.random.default_rng([config.seed, 0, step]))
        state, m = step_fn(state, parallel.global_batch(mesh, batch), jax.random.fold_in(key, step))
        metrics.append({k: float(v) for k, v in m.items()})  # waits for the step (environment.md: no deadlock)
        print(f"STEP {step}", flush=True)
        if step == args.fail_after:
            raise KeyError(f"a deliberate failure of process {jax.process_index()} after step {step}")
        if step == args.exit_after:
            print(f"error: a deliberate exit of process {jax.process_index()} after step {step}", file=sys.stderr)
            sys.exit(2)  # as the command line's one-line user errors do
        if step == args.host_after:
            time.sleep(600)  # host work without any collective, longer than any test waits
        time.sleep(args.sleep_s)
    # Replicated arrays span every process: read this process' copy.
    leaves = [np.asarray(x.addressable_data(0)) for x in jax.tree_util.tree_leaves(state.params)]
    np.savez(
        args.out,
        **{f"param_{i}": v for i, v in enumerate(leaves)},
        **{f"metric_{k}": np.array([m[k] for m in metrics]) for k in metrics[0]},
        step=np.asarray(state.step.addressable_data(0)),
    )
    print("DONE", flush=True)
    time.sleep(args.linger_s)  # e.g. process 0 writing reports while the others already wait at the exit


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--num_processes", type=int, default=1)
    p.add_argument("--process_id", type=int, default=0)
    p.add_argument("--out", default="")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--sleep_s", type=float, default=0.0)
    p.add_argument("--host_after", type=int, default=-1)
    p.add_argument("--fail_after", type=int, default=-1)
    p.add_argument("--exit_after", type=int, default=-1)
    p.add_argument("--linger_s", type=float, default=0.0)
    p.add_argument("--timeout_s", type=float, default=10.0)
    args = p.parse_args(argv)
    if args.num_processes > 1:
        distributed.initialize(
            f"127.0.0.1:{args.port}", args.num_processes, args.process_id, timeout_s=args.timeout_s, init_timeout_s=60
        )
    with distributed.guard():
        train(args)


if __name__ == "__main__":
    main(sys.argv[1:])
