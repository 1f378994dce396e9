"""MADFlow: RGB + point cloud, cross-modal alignment, difference-compensated fusion, FSFlow.

Commands::

    python -m experiments.main --config=configs/madflow.py --workdir=runs/madflow
    python -m experiments.main --config=configs/madflow.py:smoke --workdir=runs/madflow_smoke
    python -m experiments.main --config=configs/madflow.py:paper --workdir=runs/madflow_bagel \\
        --config.data.root=/path/to/mvtec_3d_anomaly_detection --config.data.categories=bagel \\
        --config.model.backbone.weights=weights/effb5.msgpack --config.model.points.weights=weights/pointmae.msgpack

Variants (``--config=configs/madflow.py:<arg>``):

* ``""`` (default): the built-in multimodal set (``data.layout=mvtec3d`` with ``data.root=""``:
  puck and bun, 256 px RGB with organised clouds, geometry-only dents, bumps and cuts, holes
  and stains; ``jaxflow_ad/data/synthetic3d.py``), sized for a 2-core CPU: the offline
  EfficientNet-Lite0 stand-in for B5 at 384 px (taps block19/26/35 become Lite0's
  block7/10/14 at the same strides: 12x12 features, 384 channels), the cloud at 128 px with a
  *random* Point-MAE of 256 groups of 32 points, the official CMA at half width with one x2
  stage (20 epochs), FSFlow as in the paper (4 blocks, hidden 64, N = 3) for 24 epochs, batch 8
  (6 steps an epoch on the 48 training samples). Measured with ``python -m experiments.main
  --config=configs/madflow.py`` (seed 0) on the 2-core CPU, the Lite0 file converted and the
  built-in set written beforehand: 11 min 1 s wall for the three objects on an idle CPU (per
object: features 44-45 s, CMA 120 steps and flow 144 steps 155-163 s, evaluation 4 s; puck
also 17 s of reading and 11 s of compilation, which the other two reuse)::

    | object | I-AUROC | P-AUROC | AUPRO | bump | cut | dent | hole | stain |
    |---|---|---|---|---|---|---|---|---|
    | puck | 96.9 | 99.4 | 97.2 | 100.0 | 84.7 | 100.0 | 100.0 | 100.0 |
    | bun | 90.6 | 98.0 | 90.2 | 90.3 | 62.5 | 100.0 | 100.0 | 100.0 |
    | plate | 85.3 | 97.7 | 87.1 | 84.7 | 51.4 | 90.3 | 100.0 | 100.0 |
    | **mean** | 90.9 | 98.4 | 91.5 | | | | | |

  (defect columns: image AUROC of each kind's 6 images against the 12 good ones.) The control
  ``--config.model.fusion=rgb`` (image features alone) scores 74.9 / 91.8 / 66.5 and 58.3 on the
  geometry-only kinds (bump, cut, dent; MADFlow: 84.9): the RGB of those defects is byte-identical
  to the defect-free rendering. One seed.
* ``paper``: the paper's setting (Sec. 4.2 and the code): EfficientNet-B5 at 768 px with static
  padding, taps 19/26/35 (608 channels at 24x24), Point-MAE G 1024 / M 128 on 224 px clouds,
  the official 8-layer CMA (Adam 1e-3, StepLR(15, 0.9), 50 epochs, batch 16), FSFlow 4 blocks
  (kernels 3, 3, 3, 5; hidden 64; N = 3; Adam 1e-3, StepLR(60, 0.85), 200 epochs, batch 8),
  the last epoch kept. Refuses to run on stand-in weights (``require_weights``). Paper: MVTec
  3D-AD image AUROC mean 97.6, pixel AUROC 98.6; Eyecandies 92.8 / 96.9; 27.4M parameters,
  7.1 FPS on an RTX 4090. Not run here (GPU hours).
* ``smoke``: for CI: one category of a small built-in set given as ``data.root`` by the test,
  a *random* Lite0 at 128 px (4x4 features), clouds at 32 px with Point-MAE G 32 / M 16, a
  paper-style 2-layer CMA for 1 epoch, 2 flow blocks with hidden 16 and N = 2 for 2 epochs.

Ablations (paper Tables 5-11): ``model.fusion`` (cdcf | none | ca | concat | rgb | depth),
``model.flow.subnet`` (fse | se | cbam | plain), ``model.flow.fse.mode`` (gate | add | freq |
spatial), ``model.flow.fse.dynamic``, ``model.flow.fse.deformable``, ``model.flow.fse.expand``,
``model.flow.fse.num_filters``, ``model.cma.loss`` (cos+mse | cos | mse), ``model.cma.beta``,
``model.cma.arch`` (official | paper) with ``model.cma.layers``, ``model.backbone.taps``.

Every value can be overridden as ``--config.x.y=value``.
"""

import ml_collections

from configs.common import base_config


def _adam(lr: float, step_epochs: int, gamma: float) -> ml_collections.ConfigDict:
    # torch Adam(lr, eps=1e-8, weight_decay=1e-5) (coupled L2) under StepLR(step_epochs, gamma) per epoch
    return ml_collections.ConfigDict(dict(lr=lr, eps=1e-8, weight_decay=1e-5, step_epochs=step_epochs, gamma=gamma))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = base_config("madflow", augment="none", eval_batch_size=8)  # the paper uses no augmentation
    c.data.layout = "mvtec3d"
    c.data.image_size = 768
    c.data.mvtec3d.update(cloud_size=224, depth=True)
    c.data.eyecandies.update(cloud_size=224, depth=True)

    c.model.backbone = ml_collections.ConfigDict(
        dict(
            arch="efficientnet-b5",
            taps=("block19", "block26", "block35"),  # Tab. 11: block35 | block26,block35 | all three
            weights="",  # converted checkpoint; "" = the offline Lite0 stand-in (noted in the log)
            padding="static",
            static_size=0,  # 0 = B5's native 456, as efficientnet_pytorch pads
            random_init=False,
            require_weights=False,
        )
    )
    c.model.points = ml_collections.ConfigDict(
        dict(weights="", num_group=1024, group_size=128, require_weights=False)  # "" = random Point-MAE (noted)
    )
    c.model.fusion = "cdcf"  # cdcf | none | ca | concat | rgb | depth
    c.model.cma = ml_collections.ConfigDict(
        dict(
            arch="official",  # official (8 layers, output 8S) | paper (`layers` convs at S)
            layers=4,
            width_scale=1.0,  # official: hidden widths times this
            upsamples=3,  # official: x2 stages kept
            final_relu=True,
            loss="cos+mse",  # cos+mse | cos | mse (Tab. 6)
            beta=1.0,  # Eq. 15 (Tab. 7)
        )
    )
    c.model.flow = ml_collections.ConfigDict(
        dict(
            kernels=(3, 3, 3, 5),  # one block per kernel size
            hidden=64,
            clamp=1.9,
            pe_channels=32,
            subnet="fse",  # fse | se | cbam | plain (Tab. 5, 8)
            conv_impl="xla",
            fse=ml_collections.ConfigDict(
                dict(expand=1.0, num_filters=3, mode="gate", dynamic=True, deformable=True)  # Tab. 8, 9
            ),
        )
    )
    c.model.background = "zero"  # zero (the code) | min: background at the image's foreground minimum
    c.model.depth_scale = 1.0  # tire: 0.01 (configure), the code's depth scale 1 instead of 100
    c.model.cache_differences = True  # the flow stage reads the frozen CMA's difference maps computed once

    c.train.cma_epochs = 50
    c.train.cma_batch_size = 16
    c.train.cma_optimizer = _adam(1e-3, 15, 0.9)
    c.train.flow_epochs = 200
    c.train.batch_size = 8
    c.train.flow_optimizer = _adam(1e-3, 60, 0.85)
    c.train.checkpoint_every_steps = 1000
    c.train.log_every_steps = 50

    if arg in (None, ""):
        c.data.image_size = 384
        c.data.mvtec3d.cloud_size = 128
        c.model.points.update(num_group=256, group_size=32)
        c.model.cma.update(width_scale=0.5, upsamples=1)
        c.train.cma_epochs = 20
        c.train.cma_batch_size = 8
        c.train.cma_optimizer.step_epochs = 6
        c.train.flow_epochs = 24
        c.train.flow_optimizer.step_epochs = 8
        c.train.log_every_steps = 6
        c.train.checkpoint_every_steps = 200
    elif arg == "paper":
        c.model.backbone.require_weights = True
        c.model.points.require_weights = True
    elif arg == "smoke":
        c.data.image_size = 128
        c.data.mvtec3d.cloud_size = 32
        c.model.backbone.update(arch="efficientnet-lite0", taps=("block7", "block10", "block14"), random_init=True)
        c.model.points.update(num_group=32, group_size=16)
        c.model.cma.update(arch="paper", layers=2)
        c.model.flow.update(kernels=(3, 3), hidden=16)
        c.model.flow.fse.num_filters = 2
        c.train.cma_epochs = 1
        c.train.cma_batch_size = 4
        c.train.flow_epochs = 2
        c.train.batch_size = 4
        c.train.log_every_steps = 2
        c.eval.batch_size = 4
        c.eval.num_heatmaps = 1
    else:
        raise ValueError(f"unknown config variant {arg!r} for configs/madflow.py; use '', 'paper' or 'smoke'")
    return c
