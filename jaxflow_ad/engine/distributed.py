"""Multi-process start-up, and stopping in bounded time, with one clear message, when a process is lost.

The command line calls :func:`initialize` instead of ``jax.distributed.initialize``
and runs the experiment inside :func:`guard`::

    distributed.initialize(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id)
    with distributed.guard():
        engine.run(config, workdir, mode)

What JAX alone does when a process of the run stops (measured with jax 0.10.2 on CPU, gloo
collectives, 2 processes on 127.0.0.1, 2 busy cores):

* Peer killed (SIGKILL), survivor inside or entering a collective (every train step has
  one): within about 0.1-0.2 s the survivor gets::

      JaxRuntimeError: UNKNOWN: Gloo all-reduce failed: [external/gloo/gloo/transport/tcp/pair.cc:547]
      Connection closed by peer [127.0.0.1]:1445

  (an address and port of gloo's, not the process). Left uncaught, Python's exit runs
  ``jax.distributed.shutdown``, whose shutdown barrier waits for the dead process until the
  coordination service declares it dead, then the process aborts (SIGABRT, exit code 134)
  with ``Terminating process because the JAX distributed service detected fatal errors``, a
  page of coordination-service errors and a C++ stack trace.
* Peer killed, survivor busy on the host (no collective: reports, data): nothing until the
  coordination service misses the dead process' heartbeats, between about half and all of
  ``heartbeat_timeout_seconds`` (6.5 s and 8.6 s with 10 s; JAX's default is 100 s), then
  the same abort from a background thread; the only hint is ``The following tasks are
  unhealthy (stopped sending heartbeats): 1``.
* The coordinator (process 0) killed: the others abort at once (under 0.1 s), same check
  failure, ``Socket closed``. The abort comes from a C++ thread and cannot be intercepted
  from Python: bounded, but with JAX's message, not :class:`PeerLostError`'s.
* A peer that raises an ordinary Python exception: it prints its traceback, then waits in
  the shutdown barrier while the survivor waits in its next collective for it: both hang
  until the shutdown timeout (300 s by default; measured 305 s). Note also that a
  distributed JAX process catches SIGTERM (its preemption notifier): ``timeout`` and
  ``Popen.terminate`` do not end it; SIGKILL does.

What this module adds:

* :func:`initialize` sets JAX's heartbeat timeout to ``3 * timeout_s`` (a backstop) and
  starts a watchdog thread: every process bumps a counter under ``jaxflow_ad/alive/`` in the
  coordination service's key-value store every ``timeout_s / 5`` s (at most 5 s) and reads
  the others'. A peer whose counter has not moved for ``timeout_s`` is declared lost: the
  watchdog prints one line naming it and ends the process with :data:`EXIT_PEER_LOST`,
  whatever the main thread is doing (host work, a checkpoint barrier, the shutdown
  barrier).
* :func:`peer_lost_error` turns the errors JAX raises in a survivor (the gloo error above,
  the coordination service's heartbeat errors) into a :class:`PeerLostError` naming the lost
  process and the coordinator.
* :func:`guard` prints such an error as one line and ends the process with
  :data:`EXIT_PEER_LOST`, skipping the shutdown barrier; any other error of a multi-process
  run is printed with its traceback and ends the process at once with exit code 1, so that
  its peers see it gone and stop too instead of waiting for it.

Measured with this module (tests/engine/test_multiprocess.py, ``timeout_s=5``), process 1
killed with SIGKILL: process 0 in its train loop stops about 0.1 s later; process 0 busy on
the host stops 4-7 s later (the watchdog); process 1 raising an exception exits 1 and
process 0 stops within about a second. Process 0 prints one line and exits with 75::

    jaxflow_ad: lost process 1 of 2 (coordinator 127.0.0.1:PORT); this is process 0: JaxRuntimeError:
    UNKNOWN: Gloo all-reduce failed: [...] Connection closed by peer [127.0.0.1]:425. Look at the log
    of process 1 for why it stopped; a restarted run resumes from the latest checkpoint.

The watchdog and the coordinator's address use ``jax._src.distributed.global_state`` (JAX
has no public handle on its coordination client); in a JAX without it, :func:`initialize`
still works, without the watchdog.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import sys
import threading
import time
import traceback
from typing import NoReturn

import jax

log = logging.getLogger("jaxflow_ad")

EXIT_PEER_LOST = 75  # EX_TEMPFAIL: a restarted run resumes from the latest checkpoint
_ALIVE = "jaxflow_ad/alive/"

# What JAX's errors say when the other side of a collective or the coordination service is gone.
_LOST_PATTERNS = re.compile(
    r"connection closed by peer|connection reset by peer|broken pipe|socket closed|connection refused"
    r"|stopped sending heartbeats|heartbeat timeout|tasks are unhealthy",
    re.IGNORECASE,
)


class PeerLostError(RuntimeError):
    """Another process of a multi-process run stopped (crashed, was killed, lost its host).

    Attributes:
      peer: the lost process' index (``None`` when it could not be told).
      process_index: this process' index.
      num_processes: the number of processes of the run.
      coordinator: the coordinator's ``host:port``.
      cause: what gave the loss away (JAX's error, or the watchdog's observation).
    """

    def __init__(self, peer: int | None, process_index: int, num_processes: int, coordinator: str | None, cause: str):
        self.peer = peer
        self.process_index = process_index
        self.num_processes = num_processes
        self.coordinator = coordinator
        self.cause = cause
        who = "a peer process" if peer is None else f"process {peer}"
        role = " (the coordinator)" if peer == 0 else ""
        super().__init__(
            f"lost {who}{role} of {num_processes} (coordinator {coordinator}); this is process {process_index}: "
            f"{cause}. Look at the log of {who} for why it stopped; a restarted run resumes from the latest "
            "checkpoint."
        )


class _Session:
    """What :func:`initialize` set up: this process' place in the run and its watchdog."""

    def __init__(self, process_index: int, num_processes: int, coordinator: str | None, timeout_s: float):
        self.process_index = process_index
        self.num_processes = num_processes
        self.coordinator = coordinator
        self.timeout_s = timeout_s
        self.watchdog: _Watchdog | None = None


_SESSION: _Session | None = None
_EXIT_LOCK = threading.Lock()


def _jax_state():
    """JAX's private distributed state (its coordination client), or ``None`` in a JAX without it."""
    try:
        from jax._src import distributed as jax_distributed

        return jax_distributed.global_state
    except (ImportError, AttributeError):
        return None


def initialize(
    coordinator: str | None,
    num_processes: int | None,
    process_id: int | None,
    *,
    timeout_s: float = 30.0,
    init_timeout_s: int = 300,
    watchdog: bool = True,
) -> bool:
    """``jax.distributed.initialize`` with a lost peer detected in bounded time.

    Args:
      coordinator: ``host:port`` of process 0. ``None`` and no ``JAX_COORDINATOR_ADDRESS`` in
        the environment: a single-process run, nothing to do.
      num_processes, process_id: as ``jax.distributed.initialize`` (``None``: from the
        environment variables or the cluster it detects).
      timeout_s: a peer that shows no sign of life for this long is declared lost (the
        watchdog); JAX's own heartbeat timeout, the backstop, is three times as long.
      init_timeout_s: how long to wait for every process to connect at start-up.
      watchdog: start the watchdog thread (see the module docstring).

    Returns:
      whether JAX's distributed system was initialized.
    """
    global _SESSION
    if coordinator is None and not os.environ.get("JAX_COORDINATOR_ADDRESS"):
        return False
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    jax.distributed.initialize(
        coordinator,
        num_processes,
        process_id,
        initialization_timeout=int(init_timeout_s),
        heartbeat_timeout_seconds=max(3, math.ceil(3 * timeout_s)),
    )
    state = _jax_state()
    client = getattr(state, "client", None)
    index = int(getattr(state, "process_id", process_id if process_id is not None else 0))
    count = int(getattr(state, "num_processes", num_processes if num_processes is not None else 1))
    _SESSION = _Session(index, count, getattr(state, "coordinator_address", None) or coordinator, float(timeout_s))
    if watchdog and count > 1:
        if client is None:
            log.warning("no access to JAX's coordination client: a lost peer is left to JAX's heartbeat timeout")
        else:
            _SESSION.watchdog = _Watchdog(client, _SESSION)
            _SESSION.watchdog.start()
    return True


class _Watchdog(threading.Thread):
    """Bumps this process' counter in the coordination service's key-value store and ends the
    process when a peer's counter stops moving for ``timeout_s`` (see the module docstring).

    It keeps beating while the main thread waits in JAX's shutdown barrier (the barrier
    releases the GIL), so a process that finished first is not taken for lost by a peer
    still writing its reports; it stops once JAX has shut its client down. A peer is judged
    by whether its counter moved between two reads, so a pause of this thread cannot make
    it declare a live peer lost; a process whose own watchdog cannot run for ``timeout_s``
    (something holding the GIL that long) would be, so keep ``timeout_s`` well above that."""

    def __init__(self, client, session: _Session):
        super().__init__(name="jaxflow_ad-peer-watchdog", daemon=True)
        self.client = client
        self.session = session
        self.interval_s = min(max(session.timeout_s / 5, 0.1), 5.0)
        self.lost: PeerLostError | None = None
        self.lost_event = threading.Event()

    def _declare(self, peer: int | None, cause: str) -> None:
        s = self.session
        self.lost = PeerLostError(peer, s.process_index, s.num_processes, s.coordinator, cause)
        self.lost_event.set()
        exit_peer_lost(self.lost)

    def run(self) -> None:
        s = self.session
        me, timeout = s.process_index, s.timeout_s
        start = time.monotonic()
        seen = {p: (None, start) for p in range(s.num_processes) if p != me}  # last value, when it changed
        last_ok, beat = start, 0
        state = _jax_state()
        while True:
            if state is not None and state.client is not self.client:
                return  # JAX shut its client down: the run is over
            now = time.monotonic()
            try:
                beat += 1
                self.client.key_value_set(f"{_ALIVE}{me}", str(beat), allow_overwrite=True)
                values = dict(self.client.key_value_dir_get(_ALIVE))
                last_ok = now
            except Exception as e:  # the coordination service is unreachable
                if now - last_ok > timeout:
                    peer = 0 if me != 0 else None
                    self._declare(peer, f"the coordination service has not answered for {now - last_ok:.0f} s ({e})")
                time.sleep(self.interval_s)
                continue
            for p, (value, since) in list(seen.items()):
                current = values.get(f"{_ALIVE}{p}")
                if current != value:
                    seen[p] = (current, now)
                elif now - since > timeout:
                    self._declare(
                        p, f"no sign of life from it for {now - since:.0f} s (watchdog, timeout {timeout:g} s)"
                    )
            time.sleep(self.interval_s)


def _first_line(text: str, limit: int = 300) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def peer_lost_error(
    exc: BaseException,
    *,
    process_index: int | None = None,
    num_processes: int | None = None,
    coordinator: str | None = None,
) -> PeerLostError | None:
    """``exc`` as a :class:`PeerLostError` if it says that a peer process is gone, else ``None``.

    Recognises the errors JAX raises in a survivor (gloo's ``Connection closed by peer``,
    the coordination service's heartbeat errors; see the module docstring), in ``exc`` or
    the exceptions it was raised from. The lost process is the other one in a 2-process
    run; with more, the watchdog's verdict is awaited (at most ``timeout_s`` and a beat).
    The keyword arguments default to what :func:`initialize` recorded.
    """
    if isinstance(exc, PeerLostError):
        return exc
    s = _SESSION
    index = process_index if process_index is not None else (s.process_index if s else jax.process_index())
    count = num_processes if num_processes is not None else (s.num_processes if s else jax.process_count())
    coordinator = coordinator if coordinator is not None else (s.coordinator if s else None)
    if count < 2:
        return None
    chain, e = [], exc
    while e is not None and len(chain) < 10:
        chain.append(e)
        e = e.__cause__ or e.__context__
    hit = next((e for e in chain if _LOST_PATTERNS.search(str(e))), None)
    if hit is None:
        return None
    cause = f"{type(hit).__name__}: {_first_line(str(hit))}"
    peer = None
    dog = s.watchdog if s is not None else None
    if count == 2:
        peer = 1 - index
    elif dog is not None and dog.is_alive():
        dog.lost_event.wait(s.timeout_s + 2 * dog.interval_s)  # the watchdog tells which peer is silent
        peer = dog.lost.peer if dog.lost is not None else None
    return PeerLostError(peer, index, count, coordinator, cause)


def exit_peer_lost(err: PeerLostError) -> NoReturn:
    """Print ``err`` as one line on stderr and end the process now with :data:`EXIT_PEER_LOST`.

    ``os._exit``: a normal exit would run JAX's shutdown barrier, which waits for the lost
    peer and then aborts. Only the first caller prints (the main thread and the watchdog may
    both get here)."""
    with _EXIT_LOCK:  # never released: the process ends inside
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        with contextlib.suppress(Exception):
            for handler in logging.getLogger().handlers + log.handlers:
                handler.flush()
        with contextlib.suppress(Exception):
            sys.stderr.write(f"jaxflow_ad: {err}\n")
            sys.stderr.flush()
        os._exit(EXIT_PEER_LOST)


def exit_failed(exc: BaseException) -> NoReturn:
    """Print ``exc`` with its traceback and end the process now with exit code 1.

    A failing process of a multi-process run must not wait in JAX's shutdown barrier: its
    peers, blocked in the next collective, would wait with it (measured: both stuck until the
    300 s shutdown timeout). Once it is gone, they see it as lost and stop too."""
    with _EXIT_LOCK:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            traceback.print_exception(exc, file=sys.stderr)
            sys.stderr.write(f"jaxflow_ad: process {_SESSION.process_index if _SESSION else '?'} failed; stopping\n")
            sys.stderr.flush()
        os._exit(1)


@contextlib.contextmanager
def guard():
    """Run the body of a (possibly) multi-process run so that no process hangs when another stops.

    * An error that says a peer process is gone (:func:`peer_lost_error`): one line naming the
      lost process and the coordinator, exit code :data:`EXIT_PEER_LOST`.
    * Any other error in a multi-process run: its traceback, exit code 1, at once (see
      :func:`exit_failed`).
    * ``sys.exit(code)`` with a nonzero code in a multi-process run (the command line's
      one-line user errors): that code, at once, also without the shutdown barrier.
    * In a single-process run, errors and exits propagate unchanged.
    """
    try:
        yield
    except SystemExit as e:
        if _SESSION is None or _SESSION.num_processes < 2 or e.code in (None, 0):
            raise
        with _EXIT_LOCK:
            if not isinstance(e.code, int):
                with contextlib.suppress(Exception):
                    sys.stderr.write(f"{e.code}\n")
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            os._exit(e.code if isinstance(e.code, int) else 1)
    except (Exception, KeyboardInterrupt) as e:
        if _SESSION is None or _SESSION.num_processes < 2:
            raise
        err = peer_lost_error(e) if isinstance(e, Exception) else None
        if err is not None:
            exit_peer_lost(err)
        exit_failed(e)
