"""experiments/notebooks/tour.ipynb runs from top to bottom (every code cell, in order, in a fresh
process), against a workdir trained and exported here, so that the notebook cannot rot."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "experiments" / "notebooks" / "tour.ipynb"


@pytest.mark.timeout(400)
def test_the_notebook_runs_and_scores_with_an_exported_model(tmp_path, pyramidflow_smoke_run):
    _, run = pyramidflow_smoke_run
    nb = json.loads(NOTEBOOK.read_text())
    code = "\n\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", JAXFLOW_AD_EXPORT=str(run / "coin" / "export"))
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    values = {line.split(":")[0]: line.split(":")[1].split("|")[0].strip() for line in out.splitlines() if ":" in line}
    assert float(values["max round-trip error"]) < 1e-5  # the pyramid is invertible (to float rounding)
    assert abs(float(values["transfer at DC"])) < 1e-12  # a high-pass filter removes the mean
    auprs = [float(line.rsplit(" ", 1)[1]) for line in out.splitlines() if line.startswith("AUPRO")]
    assert auprs[0] > 0.9 and auprs[1] < 0.5
    assert "score " in out and (tmp_path / "heatmap.png").exists()
