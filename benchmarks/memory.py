"""Memory measurements shared by the benchmark scripts (process RSS on CPU,
device peak bytes on GPU)."""

from __future__ import annotations

import platform
import resource


def peak_mb() -> float:
    """Peak memory of the process so far: device peak on GPU, peak RSS on CPU."""
    import jax

    dev = jax.devices()[0]
    if dev.platform != "cpu":
        stats = dev.memory_stats() or {}
        return stats.get("peak_bytes_in_use", 0) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> bool:
    """Give memory freed by the compiler back to the OS (glibc ``malloc_trim``) and
    reset the kernel's peak-RSS mark (``VmHWM``) to the current RSS (Linux
    ``clear_refs`` 5), so that the steps' peak can be told from the compiler's."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def hwm_mb() -> float:
    return status_mb("VmHWM")


def rss_mb() -> float:
    return status_mb("VmRSS")


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), for naming the machine a benchmark ran on."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def xla_mb(compiled) -> float:
    """XLA's memory analysis of a compiled executable: arguments + outputs - aliased + temporaries, MB."""
    mem = compiled.memory_analysis()
    if mem is None:
        return float("nan")
    b = mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes + mem.temp_size_in_bytes
    return b / 2**20


def n_params(tree) -> int:
    """Number of scalars in a pytree of arrays."""
    import jax
    import numpy as np

    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))
