"""Host memory for XLA:CPU: glibc's ``malloc`` with transparent huge pages.

Standard library only: the command line calls :func:`hugepage_malloc_env` before it imports
anything heavy, and re-executes itself with the environment it returns.
"""

from __future__ import annotations

import os
import pathlib
import platform
import sys

THP_ENABLED = pathlib.Path("/sys/kernel/mm/transparent_hugepage/enabled")


def hugepage_malloc_env(environ: dict[str, str], thp: str | None, libc: str) -> dict[str, str] | None:
    """The environment to re-execute the command line with so that glibc's ``malloc`` asks for
    transparent huge pages (``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``), or None when that would
    change nothing: not glibc, the kernel's THP mode (``thp``, the text of :data:`THP_ENABLED`) is not
    ``[madvise]`` (``[always]`` already gives them, ``[never]`` refuses them), the tunable is set
    already, or ``JAXFLOW_AD_HUGEPAGES=0``.

    Why: XLA:CPU allocates each step's temporary buffers afresh, and glibc serves large blocks
    with fresh 4 KiB pages that the kernel faults in and zeroes one by one. PyramidFlow's
    quick-start training took 7.6 M page faults (50 s of system time for 4 categories); with huge
    pages 0.2 M, and its steps 8-10 % less wall time (benchmarks/main_job.py, README). A notebook
    gets the same with its kernel started under ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``."""
    if libc != "glibc" or not thp or "[madvise]" not in thp:
        return None
    if environ.get("JAXFLOW_AD_HUGEPAGES", "1") == "0" or "glibc.malloc.hugetlb" in environ.get("GLIBC_TUNABLES", ""):
        return None
    tunables = ":".join(t for t in (environ.get("GLIBC_TUNABLES", ""), "glibc.malloc.hugetlb=1") if t)
    return dict(environ, GLIBC_TUNABLES=tunables)


def reexec_with_hugepage_malloc() -> None:
    """Re-execute this process' command once with :func:`hugepage_malloc_env`'s environment (the
    command line and the benchmarks call it first thing); returns where that changes nothing."""
    try:
        thp = THP_ENABLED.read_text()
    except OSError:
        return
    env = hugepage_malloc_env(dict(os.environ), thp, platform.libc_ver()[0])
    if env is not None:
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
