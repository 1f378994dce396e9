"""``--mode=export``: the StableHLO scorer of each method equals the in-process one, at any batch size,
in this process and in a fresh one that imports no training code (:mod:`jaxflow_ad.export`,
:mod:`jaxflow_ad.serving`).

Each method's smoke config, shrunk (32 px, a few channels), with randomly initialised weights (and, for
PyramidFlow, a template fitted on a few random images): equality of the scorer does not need training.
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

pytest.importorskip("flatbuffers", reason="jax.export serialization needs the 'flatbuffers' package")

from configs import fair as fair_config  # noqa: E402
from configs import masf as masf_config  # noqa: E402
from configs import nfbmr as nfbmr_config  # noqa: E402
from configs import pyramidflow as pyramidflow_config  # noqa: E402
from jaxflow_ad import export, models, serving  # noqa: E402
from jaxflow_ad.metrics import normalize_scores  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
SIZE = 32
THRESHOLD = {"source": "test", "image": None, "holdout_min": None, "pixel": None, "pixel_min": None}
TOL = 1e-5


def _pyramidflow():
    c = pyramidflow_config.get_config("smoke")
    c.model.channels = 4
    c.model.levels = 2
    return c


def _fair():
    c = fair_config.get_config("smoke")
    c.model.base_width = 4
    c.model.score.mean_size = 5
    return c


def _nfbmr():
    c = nfbmr_config.get_config("smoke")
    c.model.flow.hidden = 8
    c.model.bmr.width = 8
    return c


def _masf():
    c = masf_config.get_config("smoke")
    c.model.bank.reservoir = 2000
    return c


CONFIGS = {"pyramidflow": _pyramidflow, "fair": _fair, "nfbmr": _nfbmr, "masf": _masf}


def _images(n, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)


def _batch(method, images):
    batch = {"image": images}
    if method.extractor is not None:  # as the engine's feature cache gives them
        batch["features"] = {k: np.asarray(v) for k, v in method.extractor(images).items()}
    return batch


def _reference(method, state, config, images):
    """``method.score`` in this process, as ``--mode=eval`` scores its first batch."""
    key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(int(config.seed)), 1), 0)
    maps, scores = jax.jit(method.score)(state, _batch(method, images), key)
    return np.asarray(maps), np.asarray(scores)


# one method in the default run; the others with -m slow (each export takes 10-20 s to build)
@pytest.fixture(
    scope="module",
    params=[c if c == "pyramidflow" else pytest.param(c, marks=pytest.mark.slow) for c in sorted(CONFIGS)],
)
def exported(request, tmp_path_factory):
    """``(method, state, config, threshold, export folder)`` of one method."""
    config = CONFIGS[request.param]()
    config.data.image_size = SIZE
    method = models.build(config)
    fit = _images(4, seed=1)
    state = method.init(jax.random.PRNGKey(0), _batch(method, fit[:1]))
    if method.has_statistics:
        state = method.statistics_from(state, [_batch(method, fit)])
    # a threshold inside the range of the scores of the scored images, so that both decisions occur
    maps, scores = _reference(method, state, config, _images(3, seed=2))
    threshold = dict(THRESHOLD)
    threshold.update(
        image=float(np.median(scores)),
        holdout_min=float(np.min(scores)),
        pixel=float(np.quantile(maps, 0.9)),
        pixel_min=float(np.min(maps)),
    )
    out = export.export_scorer(method, state, config, threshold, tmp_path_factory.mktemp(request.param))
    return method, state, config, threshold, out


def test_files_and_meta(exported):
    method, _, config, threshold, out = exported
    meta = json.loads((out / "meta.json").read_text())
    assert meta["method"] == method.name
    assert meta["image_size"] == SIZE
    assert meta["threshold"] == threshold
    assert meta["platforms"] == ["cpu", "cuda"]
    assert meta["input"]["images"]["shape"] == ["b", SIZE, SIZE, 3]
    assert meta["output_names"] == list(serving.OUTPUT_NAMES) == list(export.OUTPUT_NAMES)
    assert meta["outputs"]["maps"]["shape"] == ["b", str(SIZE), str(SIZE)]
    with np.load(out / "params.npz") as z:
        assert len(z.files) == len(meta["input"]["params"]["keys"])
    if method.extractor is not None:
        assert any(p.startswith("['extractor']") for p in meta["input"]["params"]["paths"])


@pytest.mark.parametrize("batch", [1, 3])
def test_equals_in_process_scorer(exported, batch):
    method, state, config, threshold, out = exported
    images = _images(batch, seed=2)
    ref_maps, ref_scores = _reference(method, state, config, images)
    scorer = serving.load(out)
    o = scorer.outputs(images)
    np.testing.assert_allclose(o["maps"], ref_maps, rtol=TOL, atol=TOL)
    np.testing.assert_allclose(o["scores"], ref_scores, rtol=TOL, atol=TOL)
    assert o["maps"].dtype == np.float32 and o["scores"].dtype == np.float32
    # the rules on the exported scores themselves (exact), and on the reference ones (the same here)
    np.testing.assert_array_equal(o["decisions"], o["scores"].astype(np.float64) >= threshold["image"])
    np.testing.assert_array_equal(o["decisions"], ref_scores.astype(np.float64) >= threshold["image"])
    np.testing.assert_array_equal(o["pixel_masks"], o["maps"].astype(np.float64) >= threshold["pixel"])
    want = normalize_scores(o["scores"], threshold["image"], threshold["holdout_min"])
    np.testing.assert_allclose(o["normalized"], want, rtol=TOL, atol=TOL)
    if batch == 3:  # the threshold is the median of these scores
        assert o["decisions"].sum() == 2
    maps, scores, decisions = scorer(list(images))  # a list of images gives the same
    np.testing.assert_array_equal(maps, o["maps"])
    np.testing.assert_array_equal(scores, o["scores"])
    np.testing.assert_array_equal(decisions, o["decisions"])


_FRESH = """
import sys
import numpy as np
from jaxflow_ad import serving
scorer = serving.load(sys.argv[1])
out = scorer.outputs(np.load(sys.argv[2]))
np.savez(sys.argv[3], **out)
training = [m for m in sys.modules if m.split(".")[0] in ("flax", "optax", "ml_collections", "configs")
            or m.startswith(("jaxflow_ad.models", "jaxflow_ad.engine", "jaxflow_ad.data", "jaxflow_ad.backbones"))]
assert not training, training
"""


def test_fresh_process_without_training_code(exported, tmp_path):
    method, state, config, threshold, out = exported
    images = _images(3, seed=3)
    np.save(tmp_path / "images.npy", images)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, "-c", _FRESH, str(out), str(tmp_path / "images.npy"), str(tmp_path / "out.npz")]
    r = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    ref_maps, ref_scores = _reference(method, state, config, images)
    in_process = serving.load(out).outputs(images)
    with np.load(tmp_path / "out.npz") as z:
        np.testing.assert_allclose(z["maps"], ref_maps, rtol=TOL, atol=TOL)
        np.testing.assert_allclose(z["scores"], ref_scores, rtol=TOL, atol=TOL)
        for name in serving.OUTPUT_NAMES:
            np.testing.assert_allclose(z[name], in_process[name], rtol=TOL, atol=TOL)


def test_without_threshold(exported, tmp_path):
    method, state, config, _, _ = exported
    out = export.export_scorer(method, state, config, None, tmp_path, platforms=("cpu",))
    scorer = serving.load(out)
    assert not scorer.has_threshold and scorer.meta["threshold"] is None
    o = scorer.outputs(_images(2, seed=4))
    assert np.all(np.isnan(o["normalized"]))
    assert not o["decisions"].any() and not o["pixel_masks"].any()
    _, ref_scores = _reference(method, state, config, _images(2, seed=4))
    np.testing.assert_allclose(o["scores"], ref_scores, rtol=TOL, atol=TOL)


def test_input_errors(exported):
    out = exported[-1]
    scorer = serving.load(out)
    with pytest.raises(ValueError, match=rf"uint8 RGB images of shape \[B, {SIZE}, {SIZE}, 3\]"):
        scorer(_images(2, 0).astype(np.float32) / 255)
    with pytest.raises(ValueError, match="Resize first"):
        scorer(np.zeros((2, SIZE + 1, SIZE + 1, 3), np.uint8))
    with pytest.raises(ValueError, match="images\\[None\\]"):
        scorer(_images(1, 0)[0])
    with pytest.raises(ValueError, match="image 1 is"):
        scorer([_images(1, 0)[0], np.zeros((SIZE, SIZE), np.uint8)])
    empty = scorer.outputs(np.zeros((0, SIZE, SIZE, 3), np.uint8))
    assert empty["maps"].shape == (0, SIZE, SIZE) and empty["decisions"].dtype == bool


def test_mismatched_params(exported, tmp_path):
    out = exported[-1]
    for name in ("scorer.stablehlo", "meta.json"):
        (tmp_path / name).write_bytes((out / name).read_bytes())
    with np.load(out / "params.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["p00000"] = np.zeros((7, 7), np.float32)
    np.savez(tmp_path / "params.npz", **arrays)
    with pytest.raises(ValueError, match="p00000 is float32"):
        serving.load(tmp_path)
    (tmp_path / "params.npz").unlink()
    with pytest.raises(FileNotFoundError, match="params.npz is missing"):
        serving.load(tmp_path)


def test_float32_at_least():
    for t in (0.1, 1 / 3, 2.0, -0.7, 1e-30):
        f = export.float32_at_least(t)
        assert f.dtype == np.float32 and float(f) >= t
        below = np.nextafter(f, np.float32(-np.inf))
        assert float(below) < t
