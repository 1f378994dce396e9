"""``--mode=predict``: score new, unlabelled images with a trained workdir; no dataset needed.

Inputs (``predict.input``): a folder (searched recursively for images), a glob
(``"line3/**/*.png"``), or a text file listing one image path per line (relative
paths are taken from the list file's folder). Any size and bit depth
:func:`jaxflow_ad.data.imageio.read_image` accepts (8/16-bit gray, RGB(A),
palette; PNG, JPEG, BMP, TIFF): each image is read and resized exactly as the
training reader does (``data.resize`` to ``data.image_size``), so a test image
scores the same here as in ``--mode=eval``.

Outputs, in ``predict.output`` (default ``<workdir>/<category>/predictions``)::

    predictions.csv     path, score, normalized, decision, threshold (one row per image, appended
                        as images are done: the file survives an interruption)
    maps/<name>.npy     the anomaly map at the model's resolution (float32, as scored)
    heatmaps/<name>.png the image with the map overlaid, the predicted mask's contour and the score
    masks/<name>.png    the predicted mask at the image's own size (0/255): map >= pixel threshold

``<name>`` is the image's path relative to the input folder, with ``/`` as ``__``
and without its extension. A rerun skips the images already in
``predictions.csv`` (resumable on a large folder). Decisions need a threshold:
the one saved after training (``<workdir>/<category>/threshold.json``, from
``eval.threshold.holdout``), or ``predict.threshold`` given by hand; without
either, ``normalized`` and ``decision`` are left empty and the log says why.
"""

from __future__ import annotations

import csv
import glob
import json
import logging
import os
import pathlib

import jax
import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from jaxflow_ad import data as data_lib
from jaxflow_ad import metrics as metrics_lib
from jaxflow_ad.data.resize import resize_image
from jaxflow_ad.engine import parallel
from jaxflow_ad.engine import report as report_lib
from jaxflow_ad.errors import ConfigError

log = logging.getLogger("jaxflow_ad")
EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
COLUMNS = ("path", "score", "normalized", "decision", "threshold")


def resolve_inputs(spec: str) -> tuple[list[pathlib.Path], pathlib.Path]:
    """``(image paths, the folder names are taken relative to)`` for a folder, a glob or a list file."""
    if not spec:
        raise ConfigError("--mode=predict needs --config.predict.input=<folder, glob or list file>")
    p = pathlib.Path(spec).expanduser()
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in EXTENSIONS)
        base = p
    elif p.is_file() and p.suffix.lower() not in EXTENSIONS:
        lines = [ln.strip() for ln in p.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        files = [(p.parent / ln) if not os.path.isabs(ln) else pathlib.Path(ln) for ln in lines]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise data_lib.DatasetError(f"the list {p} names {len(missing)} missing files, e.g. {missing[:3]}")
        base = p.parent
    elif p.is_file():
        files, base = [p], p.parent
    else:
        files = sorted(pathlib.Path(f) for f in glob.glob(os.path.expanduser(spec), recursive=True))
        files = [f for f in files if f.is_file() and f.suffix.lower() in EXTENSIONS]
        base = pathlib.Path(os.path.commonpath([str(f.parent) for f in files])) if files else pathlib.Path(".")
    if not files:
        raise data_lib.DatasetError(
            f"predict.input={spec!r} matches no image ({', '.join(EXTENSIONS)}): give a folder, a glob or a list file"
        )
    return files, base


def output_name(path: pathlib.Path, base: pathlib.Path) -> str:
    try:
        rel = path.resolve().relative_to(base.resolve())
    except ValueError:
        rel = pathlib.Path(path.name)
    return "__".join(rel.with_suffix("").parts)


def _done(csv_path: pathlib.Path) -> set[str]:
    if not csv_path.exists():
        return set()
    with csv_path.open(newline="") as f:
        return {row["path"] for row in csv.DictReader(f)}


def _heatmap(image: np.ndarray, amap: np.ndarray, mask: np.ndarray, lo: float, hi: float, text: str) -> Image.Image:
    overlay = Image.fromarray(report_lib.overlay(image, amap, lo, hi)[1])
    if mask.any():  # the predicted mask's contour: mask pixels with a background neighbour
        m = np.pad(mask, 1)
        edge = mask & ~(m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:])
        arr = np.asarray(overlay).copy()
        arr[edge] = (255, 255, 255)
        overlay = Image.fromarray(arr)
    draw = ImageDraw.Draw(overlay)
    draw.rectangle((0, 0, 8 + 7 * len(text), 16), fill=(0, 0, 0))
    draw.text((4, 2), text, fill=(255, 255, 255))
    return overlay


def predict_category(method, cfg, state, category: str, cat_dir: pathlib.Path, mesh, threshold: dict | None) -> dict:
    """Score ``cfg.predict.input`` with ``state``; returns a summary (counts, output folder)."""
    p = cfg.predict
    files, base = resolve_inputs(str(p.input))
    out = pathlib.Path(str(p.output)).expanduser() if p.get("output") else cat_dir / "predictions"
    for sub in ("maps", "heatmaps", "masks"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    csv_path = out / "predictions.csv"
    done = _done(csv_path)
    todo = [f for f in files if str(f) not in done]
    log.info("predict %s: %d images, %d already done, output %s", category, len(files), len(files) - len(todo), out)
    t_img = float(p.threshold) if p.get("threshold", "") not in ("", None) else None
    if t_img is None and threshold is not None:
        t_img = float(threshold["image"])
    if t_img is None:
        log.warning(
            "predict %s: no threshold (train with eval.threshold.holdout > 0, or give --config.predict.threshold): "
            "scores only, no decisions",
            category,
        )
    low = float(threshold["holdout_min"]) if threshold and "holdout_min" in threshold else None
    t_pix = float(threshold["pixel"]) if threshold and "pixel" in threshold else None
    lo_pix = float(threshold.get("pixel_min", 0.0)) if threshold else 0.0
    size, bs = int(cfg.data.image_size), int(cfg.eval.batch_size)
    ext = method.extractor
    if ext is None:
        score = parallel.jit_score(mesh, method.score, num_args=3)
        ext_vars = None
    else:  # the extractor and the scorer as one program: the features never leave the devices

        def with_features(state, batch, key, variables):
            return method.score(state, {**batch, "features": ext.apply(variables, batch["image"])}, key)

        score = parallel.jit_score(mesh, with_features, num_args=4)
        ext_vars = parallel.to_replicated(mesh, ext.variables)
    key = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), 1)
    new_file = not csv_path.exists()
    with csv_path.open("a", newline="") as fh:
        writer = csv.writer(fh)
        if new_file:
            writer.writerow(COLUMNS)
        for i in tqdm(range(0, len(todo), bs), desc=f"predict {category}", leave=False, disable=len(todo) <= bs):
            chunk = todo[i : i + bs]
            originals = [np.asarray(data_lib.read_image(f, what="image to predict")) for f in chunk]
            images = np.stack([resize_image(Image.fromarray(o), size, str(cfg.data.resize)) for o in originals])
            batch = parallel.global_batch(mesh, {"image": parallel.pad_rows(images, bs)})
            args = (state, batch, jax.random.fold_in(key, 0)) + (() if ext is None else (ext_vars,))
            maps, scores = score(*args)
            maps, scores = np.asarray(jax.device_get(maps))[: len(chunk)], np.asarray(jax.device_get(scores))
            for f, orig, amap, s in zip(chunk, originals, maps, scores[: len(chunk)]):
                name = output_name(f, base)
                h, w = orig.shape[:2]
                native = metrics_lib.resize_maps(amap[None], (h, w))[0]
                mask = native >= t_pix if t_pix is not None else np.zeros((h, w), bool)
                np.save(out / "maps" / f"{name}.npy", amap.astype(np.float32))
                Image.fromarray(mask.astype(np.uint8) * 255).save(out / "masks" / f"{name}.png")
                norm = (
                    metrics_lib.normalize_scores(np.float64(s), t_img, low)
                    if t_img is not None and low is not None
                    else None
                )
                text = f"score {s:.4g}" + (f"  {'ANOMALOUS' if s >= t_img else 'ok'}" if t_img is not None else "")
                hi = t_pix if t_pix is not None else float(np.max(native))
                _heatmap(orig, native, mask, lo_pix, max(hi, lo_pix + 1e-12) * 1.5, text).save(
                    out / "heatmaps" / f"{name}.png"
                )
                writer.writerow(
                    [
                        str(f),
                        f"{s:.8g}",
                        "" if norm is None else f"{float(norm):.6f}",
                        "" if t_img is None else int(s >= t_img),
                        "" if t_img is None else f"{t_img:.8g}",
                    ]
                )
            fh.flush()
    summary = {"images": len(files), "scored": len(todo), "skipped": len(files) - len(todo), "output": str(out)}
    (out / "summary.json").write_text(json.dumps({**summary, "threshold": t_img}, indent=2))
    log.info("predict %s: %s", category, summary)
    return summary
