"""Other dataset layouts through the engine: a folder of ok/ko images without masks (image metrics only)."""

import shutil

import numpy as np
import pytest

from configs import pyramidflow as pf_config
from jaxflow_ad import data, engine


@pytest.mark.timeout(300)
def test_a_folder_without_masks_trains_and_reports_image_metrics_only(tmp_path):
    src = data.ensure_builtin(categories=["coin"]) / "coin"
    root = tmp_path / "line3"
    (root / "ok").mkdir(parents=True)
    (root / "ko").mkdir()
    for p in sorted((src / "train" / "good").glob("*.png")) + sorted((src / "test" / "good").glob("*.png")):
        shutil.copy(p, root / "ok" / f"{p.parent.parent.name}_{p.name}")
    for p in sorted((src / "test").glob("[!g]*/*.png")):
        shutil.copy(p, root / "ko" / f"{p.parent.name}_{p.name}")
    cfg = pf_config.get_config("smoke")
    cfg.data.update(layout="folder", root=str(root), categories="")
    cfg.data.folder.update(normal_dir="ok", abnormal_dir="ko")
    cfg.train.epochs = 2
    r = engine.run(cfg, tmp_path / "run", "all")
    assert list(r) == ["line3"]
    m = r["line3"]
    assert "pixel_auroc" not in m and "aupro" not in m
    assert m["image_auroc"] > 0.7, m  # coin's defects are easy even for 2 epochs of the smoke model
    assert set(m["per_defect"]) == {"ko"} and set(m["per_defect"]["ko"]) == {"image_auroc", "count"}
    text = (tmp_path / "run" / "results.md").read_text()
    assert "| line3 |" in text and "| - |" in text
    assert np.isfinite(m["image_ap"])
