"""load_backbone: registry, options, converted-file round trip, offline default and its errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxflow_ad import backbones
from jaxflow_ad.backbones import WeightsError, load_backbone, save_weights, translate_taps


def test_unknown_arch_and_option():
    with pytest.raises(ValueError, match="registered"):
        load_backbone({"arch": "vgg16", "weights": None})
    with pytest.raises(ValueError, match="padding"):
        backbones.build_module("resnet18", padding="same")


def test_resnet_taps_shapes_and_roundtrip(tmp_path):
    bb = load_backbone({"arch": "resnet18", "weights": None, "random_init": True})
    assert "RANDOM" in bb.note
    module, variables = bb
    x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 64, 64, 3)), jnp.float32)
    feats = jax.jit(module.apply)(variables, x)
    ch = backbones.feature_channels("resnet18")
    for tap, stride in backbones.resnet.STRIDES.items():
        assert feats[tap].shape == (1, 64 // stride, 64 // stride, ch[tap]), tap
    path = save_weights(tmp_path / "r18", "resnet18", variables, {"source": "test"})
    assert path.name == "r18.msgpack"
    module2, variables2 = load_backbone({"arch": "resnet18", "weights": str(tmp_path / "r18"), "taps": ("layer2",)})
    out = module2.apply(variables2, x)
    assert list(out) == ["layer2"]
    np.testing.assert_array_equal(np.asarray(out["layer2"]), np.asarray(feats["layer2"]))
    with pytest.raises(WeightsError, match="'resnet18'.*'resnet34'"):
        load_backbone({"arch": "resnet34", "weights": str(path)})


def test_raw_checkpoint_and_missing_file_errors(tmp_path):
    raw = tmp_path / "efficientnet-b5-b6417697.pth"
    raw.write_bytes(b"not converted")
    with pytest.raises(WeightsError, match="python -m third_party.convert --arch efficientnet-b5"):
        load_backbone({"arch": "efficientnet-b5", "weights": str(raw)})
    with pytest.raises(WeightsError, match="not found"):
        load_backbone({"arch": "efficientnet-b5", "weights": str(tmp_path / "nope.msgpack")})


def test_missing_default_names_the_command(tmp_path, monkeypatch):
    monkeypatch.setattr(backbones, "default_weights_path", lambda: None)
    with pytest.raises(WeightsError) as e:
        load_backbone({"arch": "efficientnet-b5", "weights": None})
    assert backbones.DEFAULT_CONVERT_COMMAND in str(e.value)
    with pytest.raises(WeightsError, match="pointmae needs"):
        load_backbone({"arch": "pointmae", "weights": None})


def test_translate_taps():
    assert translate_taps(["block19", "block26", "block35"], "efficientnet-b5") == {
        "block19": "block7",
        "block26": "block10",
        "block35": "block14",
    }
    assert translate_taps(["stem", "layer1", "layer2", "layer3", "layer4"], "wide_resnet50_2") == {
        "stem": "stem",
        "layer1": "block2",
        "layer2": "block4",
        "layer3": "block10",
        "layer4": "block15",
    }


def test_offline_default_renames_taps(tmp_path):
    """weights=None for B5 -> Lite0 weights, returned under the B5 tap names, and a note."""
    lite = backbones.build_module("efficientnet-lite0", include_top=True)
    shapes = jax.eval_shape(lite.init, jax.random.PRNGKey(1), jnp.zeros((1, 32, 32, 3)))
    rng = np.random.default_rng(0)  # random numbers, no compile: only the wiring is tested here
    variables = jax.tree_util.tree_map(
        lambda s: (0.5 + rng.random(s.shape) if len(s.shape) == 1 else 0.1 * rng.standard_normal(s.shape)).astype(
            np.float32
        ),
        shapes,
    )
    path = save_weights(tmp_path / "efficientnet_lite0", "efficientnet-lite0", variables)
    bb = load_backbone(
        {
            "arch": "efficientnet-b5",
            "weights": None,
            "default_weights": str(path),
            "taps": ("block19", "block26", "block35"),
        }
    )
    assert "efficientnet-b5: no backbone weights supplied" in bb.note and "block35<-block14" in bb.note
    assert bb.arch == "efficientnet-lite0" and bb.mean == (0.5, 0.5, 0.5)
    module, v = bb
    x = jnp.asarray(rng.standard_normal((1, 32, 32, 3)), jnp.float32)
    out = jax.jit(module.apply)(v, x)
    assert {k: o.shape for k, o in out.items()} == {
        "block19": (1, 2, 2, 80),
        "block26": (1, 2, 2, 112),
        "block35": (1, 1, 1, 192),
    }
    assert np.isfinite(np.asarray(out["block35"])).all()


def test_efficientnet_configs():
    from jaxflow_ad.backbones.efficientnet import get_config, static_pads

    b5 = get_config("efficientnet-b5")
    assert len(b5.blocks) == 39 and (b5.stem, b5.head) == (48, 2048)
    assert [b5.blocks[i].cout for i in (19, 26, 35)] == [128, 176, 304]
    assert [b5.strides()[f"block{i}"] for i in (19, 26, 35)] == [16, 16, 32]
    pads = static_pads(b5, 456)
    assert [pads[k] for k in ("stem", "block3", "block8", "block13", "block27")] == [
        (0, 1),
        (0, 1),
        (1, 2),
        (1, 1),
        (2, 2),
    ]
    assert [len(get_config(f"efficientnet-b{i}").blocks) for i in range(8)] == [16, 23, 23, 26, 32, 39, 45, 55]
    lite0 = get_config("efficientnet-lite0")
    assert lite0.lite and all(b.se_channels == 0 for b in lite0.blocks) and len(lite0.blocks) == 16
    assert (get_config("efficientnet-lite4").stem, get_config("efficientnet-lite4").head) == (32, 1280)


def test_configdict_and_no_torch_import(tmp_path):
    """A ConfigDict works as cfg; importing and loading backbones never imports torch."""
    import subprocess
    import sys

    code = (
        "import sys, ml_collections\n"
        "from jaxflow_ad.backbones import load_backbone\n"
        "cfg = ml_collections.ConfigDict(dict(arch='resnet18', weights=None, random_init=True,"
        " taps=('stem',)))\n"
        "m, v = load_backbone(cfg)\n"
        "assert m.taps == ('stem',), m.taps\n"
        "assert 'torch' not in sys.modules\n"
    )
    import os
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, env=env)
