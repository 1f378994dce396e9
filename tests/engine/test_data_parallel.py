"""The data-parallel train step on 2 fake CPU devices equals 1 device for the same global batch."""

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("mode", ["plain", pytest.param("rev", marks=pytest.mark.slow)])  # rev: 20 s more
@pytest.mark.timeout(300)
def test_two_devices_match_one(mode):
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT)
    )
    # A timeout backstop: a stuck collective must fail the test, not hang CI (environment.md).
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests/engine/dp_check.py"), mode],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "OK" in proc.stdout
