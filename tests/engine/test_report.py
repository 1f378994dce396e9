"""report: heatmap figures from uint8 (Split.images) or float images."""

import numpy as np
import pytest
from PIL import Image

from jaxflow_ad.engine import report


def _inputs():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    masks = [np.zeros((20, 24), bool), np.ones((20, 24), bool), np.zeros((20, 24), bool), np.eye(20, 24, dtype=bool)]
    maps = rng.random((4, 8, 8)).astype(np.float32)
    return images, masks, maps, ["good", "crack", "good", "crack"], [f"/d/{i:03d}.png" for i in range(4)]


def test_uint8_and_float_images_give_the_same_figures(tmp_path):
    images, masks, maps, kinds, paths = _inputs()
    a = report.write_heatmaps(tmp_path / "u8", images, masks, maps, kinds, paths, per_kind=2)
    b = report.write_heatmaps(tmp_path / "f32", images.astype(np.float32) / 255, masks, maps, kinds, paths, 2)
    assert a == b == ["good_000.png", "crack_001.png", "good_002.png", "crack_003.png"]
    for name in a:
        pa, pb = np.asarray(Image.open(tmp_path / "u8" / name)), np.asarray(Image.open(tmp_path / "f32" / name))
        np.testing.assert_array_equal(pa, pb)
        # The first panel is the image itself, resized to the mask's 24x20.
        i = int(name[-7:-4])
        want = np.asarray(Image.fromarray(images[i]).resize((24, 20), Image.BILINEAR))
        np.testing.assert_array_equal(pa[:, :24], want)


def test_float_rendering_unchanged():
    """Float input keeps the clip-and-truncate conversion it always had."""
    images, masks, maps, _, _ = _inputs()
    x = np.random.default_rng(1).normal(0.5, 0.4, (16, 16, 3)).astype(np.float32)  # some values outside [0, 1]
    got = report.heatmap_panel(x, masks[1], maps[1], 0.0, 1.0)
    want = np.asarray(Image.fromarray((np.clip(x, 0, 1) * 255).astype(np.uint8)).resize((24, 20), Image.BILINEAR))
    np.testing.assert_array_equal(got[:, :24], want)


def test_save_image_and_bad_dtype(tmp_path):
    images = _inputs()[0]
    report.save_image(tmp_path / "a.png", images[0])
    report.save_image(tmp_path / "b.png", images[0] / 255.0)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "a.png")), images[0])
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "b.png")), images[0])
    with pytest.raises(ValueError, match="uint8 in \\[0, 255\\] or float in \\[0, 1\\], got dtype int64"):
        report.save_image(tmp_path / "c.png", images[0].astype(np.int64))


def test_write_text_atomic_never_leaves_a_truncated_file(tmp_path, monkeypatch):
    """A run killed while writing ``train_time.json`` left it empty, and the resumed run stopped on it:
    files the engine re-reads are written beside and renamed. A failure before the rename keeps the
    old content whole."""
    import os

    path = tmp_path / "train_time.json"
    report.write_text_atomic(path, '{"seconds": 1.0}')
    assert path.read_text() == '{"seconds": 1.0}'

    def killed(src, dst):
        raise KeyboardInterrupt("killed before the rename")

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        report.write_text_atomic(path, '{"seconds": 2.0}')
    assert path.read_text() == '{"seconds": 1.0}'
    monkeypatch.undo()
    report.write_text_atomic(path, '{"seconds": 3.0}')
    assert path.read_text() == '{"seconds": 3.0}'


def test_heatmaps_worst_first_all_on_request_and_the_operating_point(tmp_path):
    from jaxflow_ad.engine import report

    rng = np.random.default_rng(0)
    n = 6
    images = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    masks = [np.zeros((8, 8), bool)] * n
    maps = rng.random((n, 8, 8)).astype(np.float32)
    kinds = ["good", "good", "good", "crack", "crack", "hole"]
    paths = [f"{k}/{i}.png" for i, k in enumerate(kinds)]
    scores = np.array([0.1, 0.9, 0.5, 0.8, 0.2, 0.7])
    names = report.write_heatmaps(tmp_path / "a", images, masks, maps, kinds, paths, 1, scores)
    # the highest-scored good image and the lowest-scored crack come first
    assert sorted(names) == ["crack_00_4.png", "good_00_1.png", "hole_00_5.png"]
    assert len(report.write_heatmaps(tmp_path / "b", images, masks, maps, kinds, paths, -1, scores)) == n
    op = report.operating_point([0, 0, 0, 1, 1, 1], scores, kinds, 0.6)
    assert op["false_alarm_rate"] == pytest.approx(1 / 3) and op["good_images"] == 3
    assert op["per_defect"] == {"crack": {"images": 2, "miss_rate": 0.5}, "hole": {"images": 1, "miss_rate": 0.0}}
    report.score_histogram(tmp_path / "h.png", [0, 0, 0, 1, 1, 1], scores, 0.6)
    from PIL import Image

    img = np.asarray(Image.open(tmp_path / "h.png"))
    assert img.shape[2] == 3 and (img == [220, 60, 60]).all(-1).any() and (img == [60, 110, 220]).all(-1).any()
