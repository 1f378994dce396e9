"""The sections every method's config shares: seed, data and evaluation."""

import ml_collections


def base_config(model_name: str, *, augment: str, eval_batch_size: int) -> ml_collections.ConfigDict:
    """``seed``, ``data``, ``eval`` filled in; ``model`` (with ``name``) and ``train`` to be filled by the method."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    # XLA's persistent compilation cache: "default" (~/.cache/jaxflow_ad/xla, or $JAXFLOW_AD_CACHE),
    # a folder, or "none"; a second run of a command then compiles nothing
    c.compile_cache = "default"
    # categories trained and evaluated at the same time by threads of this process, sharing the device and
    # the compiled executables: "auto" = 2 on a single CPU device (one step keeps 2 cores ~75 % busy; the
    # second category fills the rest, same numbers), 1 on accelerators, meshes of several devices and
    # multi-process runs; or a number (jaxflow_ad.engine.loop.category_workers)
    c.parallel_categories = "auto"

    c.data = ml_collections.ConfigDict()
    c.data.root = ""  # "" = the built-in synthetic dataset
    c.data.layout = "mvtec"  # the reader (jaxflow_ad.data.LAYOUTS)
    # files: read data.root; tfds: its tensorflow-datasets ArrayRecord copy in tfds_dir ("" = ~/tensorflow_datasets),
    # prepared from data.root on first use (jaxflow_ad/data/tfds_source.py)
    c.data.source = "files"
    c.data.tfds_dir = ""
    c.data.resize = "pil_bilinear"  # pil_bilinear | cv2_linear: as the method's official loader (data/resize.py)
    c.data.categories = ""  # comma-separated; "" = every category under root
    c.data.image_size = 256
    c.data.augment = augment  # auto (flips + rot90 for textures), none, flip_rot90
    # data.layout=folder: <root>[/<category>]/{normal_dir, abnormal_dir[, mask_dir]} (jaxflow_ad/data/folder.py)
    c.data.folder = ml_collections.ConfigDict(
        dict(
            normal_dir="normal",
            abnormal_dir="abnormal",
            mask_dir="",  # "" = no masks: image metrics only
            mask_suffix="_mask",
            normal_test_dir="",  # "" = hold test_fraction of normal_dir out for the test split
            test_fraction=0.2,
            split_seed=0,
        )
    )

    # data.layout=mvtec3d / eyecandies: RGB + organised point clouds (jaxflow_ad/data/mvtec3d.py, eyecandies.py)
    # cloud_size 0 = the image size; clean: RANSAC plane + largest DBSCAN cluster; depth: the AST/MADFlow
    # depth branch (adds depth, foreground); cache_dir "" = <workdir>/<category>/cache
    cloud = dict(cloud_size=0, clean=False, depth=False, seed=0, cache_dir="")
    c.data.mvtec3d = ml_collections.ConfigDict(cloud)
    c.data.eyecandies = ml_collections.ConfigDict(dict(image_index=4, **cloud))  # image_4 as RGB (M3DM)

    # frozen-extractor features up to this size stay in memory; larger ones go to
    # <workdir>/<category>/features/ and are memory-mapped (and reused on resume)
    c.data.feature_cache_memory_mb = 512

    c.model = ml_collections.ConfigDict()
    c.model.name = model_name
    c.train = ml_collections.ConfigDict()
    c.train.prefetch = 2  # batches prepared ahead by a background thread while the device steps (0: none)
    # steps dispatched before their metrics are read back: auto = 1 on a mesh of several CPU devices (the
    # 2-core collective deadlock of environment.md), 10 else
    c.train.sync_every = "auto"

    c.eval = ml_collections.ConfigDict()
    c.eval.batch_size = eval_batch_size
    c.eval.fpr_limit = 0.3  # AUPRO integrated to this FPR, divided by it
    c.eval.resolution = "native"  # native (each mask's size) or an int
    c.eval.mask_resize = "nearest"  # with an int resolution: nearest | bilinear_round | cv2_exact
    c.eval.num_heatmaps = 2  # figures per defect kind (-1: all), highest-scored good and lowest-scored defects first
    # the decision threshold (<category>/threshold.json), first of: (c) manual, a number set by hand;
    # (a) F1-optimal on a labelled validation split (validation_root: a folder in the same layout as
    # the data, validation_split: which of its splits, e.g. test); (b) the quantile of the scores of
    # normal images held out of training (holdout: this fraction of train/good; 0 = none, no
    # threshold). Precision, recall and F1 at it are reported beside the threshold-free metrics.
    c.eval.threshold = ml_collections.ConfigDict(
        dict(
            holdout=0.0,
            quantile=0.99,
            pixel_quantile=0.999,
            manual="",
            validation_root="",
            validation_split="test",
        )
    )

    # --mode=predict: score new images with the trained workdir (jaxflow_ad/engine/predict.py)
    c.predict = ml_collections.ConfigDict()
    c.predict.input = ""  # a folder (recursive), a glob, or a text file with one image path per line
    c.predict.output = ""  # "" = <workdir>/<category>/predictions
    c.predict.category = ""  # "" = the workdir's only trained category
    c.predict.threshold = ""  # "" = the saved one (threshold.json); a number sets the image threshold by hand
    return c
