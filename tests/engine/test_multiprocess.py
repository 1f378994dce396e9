"""Two local processes joined by ``jax.distributed`` (gloo on 127.0.0.1, 1 CPU device each).

* They train like one process with the same global batch.
* When one of them dies (SIGKILL, or an exception), the other stops in bounded time with
  one line naming the lost process instead of hanging: see jaxflow_ad/engine/distributed.py
  for what JAX alone does (an abort after the heartbeat timeout, 100 s by default, or a
  300 s wait in the shutdown barrier when the peer raised).

Each process is tests/engine/mp_worker.py. Children are killed with SIGKILL in a ``finally``
(JAX's preemption notifier swallows SIGTERM in a distributed process).
"""

import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxflow_ad.engine import distributed

ROOT = pathlib.Path(__file__).resolve().parents[2]
WORKER = ROOT / "tests/engine/mp_worker.py"
STOP_BOUND_S = 30.0  # measured: ~0.1 s in the train loop, ~timeout_s (5 s here) on the host


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Workers:
    """Worker processes with stdout/stderr in files; every one still running is killed on exit."""

    def __init__(self, tmp_path: pathlib.Path):
        self.dir = tmp_path
        self.procs: dict[str, subprocess.Popen] = {}
        self.port = _free_port()
        env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
        env.pop("XLA_FLAGS", None)  # one device per process
        self.env = env

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
                p.wait(10)

    def start(self, name: str, *args, process_id: int | None = None, num_processes: int = 2) -> subprocess.Popen:
        cmd = [
            sys.executable,
            str(WORKER),
            "--num_processes",
            str(num_processes),
            "--out",
            str(self.dir / f"{name}.npz"),
        ]
        if process_id is not None:
            cmd += ["--port", str(self.port), "--process_id", str(process_id)]
        out = open(self.dir / f"{name}.out", "w")  # noqa: SIM115 (the child keeps it)
        err = open(self.dir / f"{name}.err", "w")  # noqa: SIM115
        self.procs[name] = subprocess.Popen(
            [*cmd, *map(str, args)], cwd=ROOT, env=self.env, stdout=out, stderr=err, text=True
        )
        out.close()
        err.close()
        return self.procs[name]

    def text(self, name: str, stream: str = "err") -> str:
        return (self.dir / f"{name}.{stream}").read_text()

    def wait(self, name: str, timeout: float) -> int:
        try:
            return self.procs[name].wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{name} still running after {timeout} s (a hang)\n{self.text(name)[-3000:]}")

    def wait_for_step(self, name: str, step: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while f"STEP {step}\n" not in self.text(name, "out"):
            if self.procs[name].poll() is not None:
                pytest.fail(
                    f"{name} exited ({self.procs[name].returncode}) before step {step}\n{self.text(name)[-3000:]}"
                )
            if time.monotonic() > deadline:
                pytest.fail(f"{name} did not reach step {step} in {timeout} s\n{self.text(name)[-3000:]}")
            time.sleep(0.05)


@pytest.mark.timeout(150)
def test_two_processes_train_like_one(tmp_path):
    """3 steps on a global batch of 4, 2 rows fed by each process, equal 1 process fed all 4."""
    with Workers(tmp_path) as w:
        w.start("ref", num_processes=1)
        for i in (0, 1):
            w.start(f"p{i}", process_id=i)
        for name in ("ref", "p0", "p1"):
            assert w.wait(name, 120) == 0, w.text(name)[-3000:]
    ref, p0, p1 = (np.load(tmp_path / f"{n}.npz") for n in ("ref", "p0", "p1"))
    assert sorted(ref.files) == sorted(p0.files)
    assert int(p0["step"]) == 3 and len(ref["metric_loss"]) == 3
    assert np.all(np.diff(ref["metric_loss"]) < 0)  # it trains
    for k in ref.files:
        np.testing.assert_array_equal(p0[k], p1[k], err_msg=k)  # the processes agree exactly
        # Measured: relative differences up to 1.2e-6 (the gradient is summed in another order).
        np.testing.assert_allclose(p0[k], ref[k], rtol=1e-5, atol=1e-8, err_msg=k)


@pytest.mark.parametrize("phase", ["train", pytest.param("host", marks=pytest.mark.slow)])
@pytest.mark.timeout(120)
def test_survivor_stops_when_peer_is_killed(tmp_path, phase):
    """SIGKILL of process 1: in the train loop (the next collective fails) or while process 0
    is busy on the host (the watchdog, timeout 5 s), process 0 stops with one line naming it."""
    args = ["--steps", 100000, "--timeout_s", 5] + (["--sleep_s", 0.05] if phase == "train" else ["--host_after", 3])
    with Workers(tmp_path) as w:
        for i in (0, 1):
            w.start(f"p{i}", *args, process_id=i)
        for i in (0, 1):
            w.wait_for_step(f"p{i}", 3)
        w.procs["p1"].kill()
        t0 = time.monotonic()
        rc = w.wait("p0", STOP_BOUND_S)
        elapsed = time.monotonic() - t0
    err = w.text("p0")
    assert rc == distributed.EXIT_PEER_LOST, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("jaxflow_ad:")]
    assert len(lines) == 1, err[-3000:]
    assert f"lost process 1 of 2 (coordinator 127.0.0.1:{w.port}); this is process 0" in lines[0]
    assert ("watchdog" in lines[0]) == (phase == "host"), lines[0]
    assert "Check failure" not in err  # not JAX's abort
    if phase == "train":
        assert elapsed < 10, elapsed  # the collective fails at once (measured ~0.1 s)
    else:
        assert 3 < elapsed < 5 + 10, elapsed  # no sign of life for 5 s (measured ~4-6 s after the kill)


@pytest.mark.slow  # the default run keeps the training and kill-in-a-collective cases
@pytest.mark.timeout(120)
def test_survivor_stops_when_coordinator_is_killed(tmp_path):
    """SIGKILL of process 0 (the coordinator): JAX itself ends process 1 at once (an abort
    that Python cannot intercept); it must not hang."""
    with Workers(tmp_path) as w:
        for i in (0, 1):
            w.start(f"p{i}", "--steps", 100000, "--sleep_s", 0.05, "--timeout_s", 5, process_id=i)
        for i in (0, 1):
            w.wait_for_step(f"p{i}", 3)
        w.procs["p0"].kill()
        rc = w.wait("p1", STOP_BOUND_S)
    assert rc != 0, w.text("p1")[-3000:]


@pytest.mark.parametrize("how", ["raise", pytest.param("exit", marks=pytest.mark.slow)])
@pytest.mark.timeout(120)
def test_failing_process_stops_its_peer(tmp_path, how):
    """Process 1 raises (or ``sys.exit(2)``s, as the command line does on a user error): it exits
    at once instead of waiting in JAX's shutdown barrier, and process 0 stops naming it
    (measured without the guard: both stuck for the 300 s shutdown timeout)."""
    with Workers(tmp_path) as w:
        w.start("p0", "--steps", 100000, "--sleep_s", 0.05, process_id=0)
        w.start(
            "p1",
            "--steps",
            100000,
            "--sleep_s",
            0.05,
            f"--{'fail' if how == 'raise' else 'exit'}_after",
            3,
            process_id=1,
        )
        w.wait_for_step("p1", 3)
        assert w.wait("p1", STOP_BOUND_S) == (1 if how == "raise" else 2), w.text("p1")[-3000:]
        assert w.wait("p0", STOP_BOUND_S) == distributed.EXIT_PEER_LOST, w.text("p0")[-3000:]
    if how == "raise":
        assert "KeyError: 'a deliberate failure of process 1 after step 3'" in w.text("p1")
        assert "jaxflow_ad: process 1 failed" in w.text("p1")
    else:
        assert w.text("p1").strip() == "error: a deliberate exit of process 1 after step 3"
    assert "jaxflow_ad: lost process 1 of 2" in w.text("p0")


@pytest.mark.slow  # the default run keeps the training and kill-in-a-collective cases
@pytest.mark.timeout(120)
def test_finished_peer_is_not_lost(tmp_path):
    """Process 1 finishes and waits at the exit while process 0 stays on the host for 3 watchdog
    timeouts: a finished process is not taken for lost; both exit 0."""
    with Workers(tmp_path) as w:
        w.start("p0", "--timeout_s", 2, "--linger_s", 6, process_id=0)
        w.start("p1", "--timeout_s", 2, process_id=1)
        for name in ("p0", "p1"):
            assert w.wait(name, 90) == 0, w.text(name)[-3000:]
    for name in ("p0", "p1"):
        assert "DONE" in w.text(name, "out")
        assert "lost" not in w.text(name)


def test_peer_lost_error_from_jax_errors(monkeypatch):
    """JAX's error texts (as measured, see distributed.py) -> PeerLostError naming the peer; others -> None."""
    gloo = ValueError(
        "UNKNOWN: Gloo all-reduce failed: [external/gloo/gloo/transport/tcp/pair.cc:547] "
        "Connection closed by peer [127.0.0.1]:1445"
    )
    err = distributed.peer_lost_error(gloo, process_index=0, num_processes=2, coordinator="10.0.0.1:1234")
    assert isinstance(err, distributed.PeerLostError) and isinstance(err, RuntimeError)
    assert (err.peer, err.process_index, err.coordinator) == (1, 0, "10.0.0.1:1234")
    assert str(err).startswith(
        "lost process 1 of 2 (coordinator 10.0.0.1:1234); this is process 0: ValueError: UNKNOWN"
    )
    err = distributed.peer_lost_error(gloo, process_index=1, num_processes=2, coordinator="h:1")
    assert err.peer == 0 and "process 0 (the coordinator)" in str(err)
    # Raised from JAX's error; with 3 processes and no watchdog the peer cannot be told.
    try:
        try:
            raise gloo
        except ValueError as e:
            raise RuntimeError("checkpoint save failed") from e
    except RuntimeError as wrapped:
        err = distributed.peer_lost_error(wrapped, process_index=2, num_processes=3, coordinator="h:1")
    assert err.peer is None and str(err).startswith("lost a peer process of 3")
    hb = RuntimeError("UNAVAILABLE: The following tasks are unhealthy (stopped sending heartbeats):\n1")
    assert distributed.peer_lost_error(hb, process_index=0, num_processes=2, coordinator="h:1").peer == 1
    assert (
        distributed.peer_lost_error(ValueError("shapes (3,) and (4,) differ"), process_index=0, num_processes=2) is None
    )
    assert distributed.peer_lost_error(gloo, process_index=0, num_processes=1) is None  # single process: not a peer
    monkeypatch.delenv("JAX_COORDINATOR_ADDRESS", raising=False)
    assert not distributed.initialize(None, None, None)  # single-process run: nothing to set up
