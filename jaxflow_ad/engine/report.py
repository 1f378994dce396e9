"""Reports written to the workdir: metrics.json, a results table, heatmap figures."""

from __future__ import annotations

import json
import logging
import os
import pathlib
import time
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image

from jaxflow_ad.metrics import resize_maps

log = logging.getLogger("jaxflow_ad")

COLUMNS = (
    ("image_auroc", "I-AUROC"),
    ("pixel_auroc", "P-AUROC"),
    ("aupro", "AUPRO"),
    ("pixel_ap", "P-AP"),
    ("pixel_f1_max", "P-F1max"),
    ("image_ap", "I-AP"),
    ("image_f1_max", "I-F1max"),
    ("train_time_s", "train s"),
    ("images_per_s", "img/s"),
)


def write_text_atomic(path: pathlib.Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader (or a run resumed after a kill) sees either the
    old content or the new, never a truncated file: a temporary file beside it, then ``os.replace``."""
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _colormap(x: np.ndarray) -> np.ndarray:
    """[0,1] -> RGB uint8 with a blue-cyan-yellow-red ramp (jet-like)."""
    x = np.clip(x, 0.0, 1.0)[..., None]
    stops = np.array([[0, 0, 0.5], [0, 0.2, 1], [0, 1, 1], [1, 1, 0], [1, 0.2, 0], [0.5, 0, 0]], np.float32)
    pos = x * (len(stops) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(stops) - 2)
    frac = pos - lo
    rgb = stops[lo[..., 0]] * (1 - frac) + stops[lo[..., 0] + 1] * frac
    return (rgb * 255).astype(np.uint8)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    """An image as uint8 for PIL: uint8 (as ``Split.images`` stores it) as is,
    float in [0, 1] clipped and scaled as before, so float input renders
    exactly as it always did."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image
    if image.dtype.kind in "biu":
        # Other integer types have no agreed range (uint16 PNGs, 0/1 masks): refuse rather than guess.
        raise ValueError(
            f"images must be uint8 in [0, 255] or float in [0, 1], got dtype {image.dtype}; "
            "convert with image.astype(np.uint8) or image / 255."
        )
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def overlay(image: np.ndarray, amap: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """``(heat, blend)``: the map coloured over ``[lo, hi]`` and its 45 % blend over ``image`` (uint8
    ``[H, W, 3]``, the map's size), as every heatmap of the reports and of ``--mode=predict`` draws it."""
    heat = _colormap((amap - lo) / max(hi - lo, 1e-12))
    return heat, (0.55 * np.asarray(image, np.float32) + 0.45 * heat).astype(np.uint8)


def heatmap_panel(image: np.ndarray, mask: np.ndarray, amap: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """image | ground truth | anomaly map | overlay, at the mask's resolution.

    ``image`` is uint8 [H, W, 3] or float [H, W, 3] in [0, 1].
    """
    h, w = mask.shape
    img = np.asarray(Image.fromarray(_to_uint8(image)).resize((w, h), Image.BILINEAR))
    m = resize_maps(amap[None], (h, w))[0] if amap.shape != (h, w) else amap
    heat, blend = overlay(img, m, lo, hi)
    gt = np.repeat((mask.astype(np.uint8) * 255)[..., None], 3, axis=-1)
    sep = np.full((h, 4, 3), 255, np.uint8)
    return np.concatenate([img, sep, gt, sep, heat, sep, blend], axis=1)


def write_heatmaps(
    out_dir: pathlib.Path,
    images: np.ndarray,
    masks: Sequence[np.ndarray],
    maps: np.ndarray,
    defect_types: Sequence[str],
    paths: Sequence[str],
    per_kind: int,
    scores: np.ndarray | None = None,
) -> list[str]:
    """Figures per defect kind (and 'good'), ``per_kind`` of each (-1: all); colour range shared by
    the category. With ``scores``, the ones worth a look come first: the highest-scored good images
    (false alarms in waiting) and the lowest-scored defects (misses in waiting), and the file names
    carry that rank (``good_00_<stem>.png``).

    ``images`` are uint8 [N, H, W, 3] (``Split.images``) or float in [0, 1].
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    lo, hi = float(np.min(maps)), float(np.max(maps))
    order = np.arange(len(defect_types))
    if scores is not None:
        s = np.asarray(scores, np.float64)
        key = np.array([-v if k == "good" else v for k, v in zip(defect_types, s)])
        order = np.argsort(key, kind="stable")
    written, seen = [], {}
    for i in order:
        kind = defect_types[i]
        rank = seen.get(kind, 0)
        if 0 <= per_kind <= rank:
            continue
        seen[kind] = rank + 1
        stem = pathlib.Path(paths[i]).stem
        name = f"{kind}_{rank:02d}_{stem}.png" if scores is not None else f"{kind}_{stem}.png"
        Image.fromarray(heatmap_panel(images[i], masks[i], maps[i], lo, hi)).save(out_dir / name)
        written.append(name)
    return written


def operating_point(labels, scores, defect_types, threshold: float) -> dict:
    """At ``threshold`` (``score >= threshold`` is anomalous): the false-alarm rate on good images and,
    per defect kind, the miss rate, with counts."""
    s, y = np.asarray(scores, np.float64), np.asarray(labels)
    kinds = np.asarray(defect_types)
    good = y == 0
    out = {"threshold": float(threshold), "good_images": int(good.sum())}
    out["false_alarm_rate"] = float(np.mean(s[good] >= threshold)) if good.any() else float("nan")
    out["per_defect"] = {
        str(k): {"images": int((kinds == k).sum()), "miss_rate": float(np.mean(s[kinds == k] < threshold))}
        for k in sorted(set(kinds[~good].tolist()))
    }
    return out


def score_histogram(path: pathlib.Path, labels, scores, threshold: float | None = None, bins: int = 30) -> None:
    """A PNG histogram of the scores of good (blue) and defective (red) images, with the threshold
    (a black line) when there is one. Drawn with PIL: no plotting library needed."""
    from PIL import ImageDraw

    s, y = np.asarray(scores, np.float64), np.asarray(labels)
    lo, hi = float(s.min()), float(s.max())
    if threshold is not None:
        lo, hi = min(lo, threshold), max(hi, threshold)
    hi = hi if hi > lo else lo + 1.0
    edges = np.linspace(lo, hi, bins + 1)
    counts = [np.histogram(s[y == c], edges)[0] for c in (0, 1)]
    w, h, pad = 480, 240, 24
    img = Image.new("RGB", (w, h + 2 * pad), "white")
    d = ImageDraw.Draw(img)
    top = max(1, max(int(c.max()) if c.size else 0 for c in counts))
    bw = (w - 2 * pad) / bins
    for c, colour, shift in ((counts[0], (60, 110, 220), 0.0), (counts[1], (220, 60, 60), 0.5)):
        for j, n in enumerate(c):
            if n:
                x0 = pad + (j + shift * 0.5) * bw
                d.rectangle((x0, pad + h * (1 - n / top), x0 + bw * 0.5, pad + h), fill=colour)
    if threshold is not None:
        x = pad + (threshold - lo) / (hi - lo) * (w - 2 * pad)
        d.line((x, pad, x, pad + h), fill="black", width=2)
    d.text((pad, 4), f"good (blue) {int((y == 0).sum())}  defective (red) {int((y == 1).sum())}", fill="black")
    d.text((pad, h + pad + 6), f"score {lo:.4g} .. {hi:.4g}", fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def save_image(path: pathlib.Path, image: np.ndarray) -> None:
    """Write ``image`` (uint8, or float in [0, 1]) as a PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_to_uint8(image)).save(path)


# shown when a threshold was chosen (eval.threshold.holdout > 0)
THRESHOLD_COLUMNS = (("image_precision", "I-P@t"), ("image_recall", "I-R@t"), ("image_f1", "I-F1@t"))
DEFECT_COLUMNS = (("image_auroc", "I-AUROC"), ("pixel_auroc", "P-AUROC"), ("aupro", "AUPRO"))


def flat_scalars(result: Mapping, prefix: str) -> dict[str, float]:
    """``{"a": 1, "per_defect": {"scratch": {"aupro": .9}}}`` -> ``{"<prefix>/a": 1,
    "<prefix>/per_defect/scratch/aupro": .9}`` (what a scalar writer takes)."""
    out = {}
    for k, v in result.items():
        if isinstance(v, Mapping):
            out.update(flat_scalars(v, f"{prefix}/{k}"))
        elif isinstance(v, (int, float)):
            out[f"{prefix}/{k}"] = float(v)
    return out


def rounded(result: Mapping, digits: int = 4) -> dict:
    """The numbers of a category's result, rounded, nested dicts kept (for the log line)."""
    return {
        k: rounded(v, digits) if isinstance(v, Mapping) else round(float(v), digits)
        for k, v in result.items()
        if isinstance(v, (Mapping, int, float))
    }


def defect_table(results: Mapping[str, Mapping]) -> str:
    """Markdown table of the per-defect-kind metrics (each kind against the good images)."""
    rows = [
        "| category | defect kind | images | " + " | ".join(c for _, c in DEFECT_COLUMNS) + " |",
        "|" + "---|" * (len(DEFECT_COLUMNS) + 3),
    ]
    for cat, r in results.items():
        for kind, m in r.get("per_defect", {}).items():
            cells = " | ".join(f"{100 * m[k]:.1f}" if k in m else "-" for k, _ in DEFECT_COLUMNS)
            rows.append(f"| {cat} | {kind} | {int(m.get('count', 0))} | {cells} |")
    return "\n".join(rows) + "\n"


def mean_row(results: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    keys = sorted({k for r in results.values() for k, v in r.items() if isinstance(v, (int, float))})
    return {k: float(np.mean([r[k] for r in results.values() if k in r])) for k in keys}


def results_table(results: Mapping[str, Mapping[str, float]]) -> str:
    """Markdown table, one row per category and a mean row."""
    columns = COLUMNS
    if any("image_f1" in r for r in results.values()):
        columns = COLUMNS[:7] + THRESHOLD_COLUMNS + COLUMNS[7:]
    head = "| category | " + " | ".join(c for _, c in columns) + " |"
    rule = "|" + "---|" * (len(columns) + 1)
    rows = [head, rule]

    def fmt(r, k):
        if k not in r:
            return "-"
        v = r[k]
        return f"{v:.1f}" if k in ("train_time_s", "images_per_s") else f"{100 * v:.1f}"

    for cat, r in list(results.items()) + [("**mean**", mean_row(results))]:
        rows.append(f"| {cat} | " + " | ".join(fmt(r, k) for k, _ in columns) + " |")
    return "\n".join(rows) + "\n"


def write_scores_csv(path: pathlib.Path, split, scores: np.ndarray, threshold: Mapping | None) -> None:
    """One row per image of ``split``: path, label, defect type, score and, with a threshold, the
    normalised score and the decision (the columns of ``--mode=predict``'s predictions.csv)."""
    import csv
    import io

    from jaxflow_ad.metrics import normalize_scores

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "label", "defect_type", "score", "normalized", "decision", "threshold"])
    t = float(threshold["image"]) if threshold else None
    low = float(threshold.get("holdout_min", np.nan)) if threshold else None
    for p, y, d, s in zip(split.paths, split.labels, split.defect_types, scores):
        norm = "" if t is None or not np.isfinite(low) else f"{float(normalize_scores(np.float64(s), t, low)):.6f}"
        w.writerow(
            [p, int(y), d, f"{float(s):.8g}", norm, "" if t is None else int(s >= t), "" if t is None else f"{t:.8g}"]
        )
    write_text_atomic(path, buf.getvalue())


def write_summary(
    workdir: pathlib.Path, results: Mapping[str, Mapping[str, float]], config_json: str, run: Mapping | None = None
) -> str:
    """``metrics.json`` and ``results.md``; returns the table. ``run``: this run's ``wall_s`` and
    ``parallel_categories`` (saved as ``metrics.json["run"]``).

    The rows of categories evaluated by earlier runs of this workdir and not by this one are kept (a
    rerun with fewer categories does not erase the others); the mean is over all rows."""
    previous, path = {}, workdir / "metrics.json"
    if path.exists():
        try:
            previous = dict(json.loads(path.read_text())["categories"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            keep = path.with_name(f"metrics.unreadable-{int(time.time())}.json")
            os.replace(path, keep)
            log.warning("%s could not be read (%s): moved to %s; its rows are not merged", path, e, keep.name)
    kept = [c for c in previous if c not in results]
    if kept:
        log.info("results: the rows of %s are kept from earlier runs of %s", kept, workdir)
    results = {**{c: previous[c] for c in kept}, **results}
    table = results_table(results)
    payload = {"categories": dict(results), "mean": mean_row(results), "config": json.loads(config_json)}
    if run:
        payload["run"] = dict(run)
    write_text_atomic(workdir / "metrics.json", json.dumps(payload, indent=2, sort_keys=True))
    text = "AUROC/AUPRO/AP/F1 in %.\n\n" + table
    if any("image_f1" in r for r in results.values()):
        text += (
            "\nI-P@t, I-R@t, I-F1@t: image precision, recall and F1 at the threshold chosen on normal "
            "training images held out of training (<category>/threshold.json).\n"
        )
    ops = {c: r["operating_point"] for c, r in results.items() if isinstance(r.get("operating_point"), Mapping)}
    if ops:
        text += (
            "\nAt the saved threshold (threshold.json): false alarms on good images, misses per defect kind (%):\n\n"
            "| category | threshold | false alarms (good) | misses per defect kind |\n|---|---|---|---|\n"
        )
        for c, op in ops.items():
            kinds = ", ".join(f"{k} {100 * v['miss_rate']:.0f} ({v['images']})" for k, v in op["per_defect"].items())
            alarms = f"{100 * op['false_alarm_rate']:.0f} ({op['good_images']})"
            text += f"| {c} | {op['threshold']:.4g} | {alarms} | {kinds} |\n"
    if all(isinstance(r.get("time_s"), Mapping) for r in results.values()):
        from jaxflow_ad.engine.timing import time_table

        text += "\nWhere the time went (s):\n\n" + time_table({c: r["time_s"] for c, r in results.items()})
        if run and run.get("parallel_categories", 1) > 1:
            text += (
                f"\n{run['parallel_categories']} categories at a time (parallel_categories): each row is its "
                f"category's own wall time; the run took {run['wall_s']:.1f} s.\n"
            )
    if any(r.get("per_defect") for r in results.values()):
        text += "\nPer defect kind (its images against the good ones):\n\n" + defect_table(results)
    write_text_atomic(workdir / "results.md", text)
    return table
