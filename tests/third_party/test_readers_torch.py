"""The torch-free readers against torch itself (``pytest -m torch``)."""

import numpy as np
import pytest

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch", reason="torch is not installed: pip install -e .[torch]")

from third_party import torch_pickle  # noqa: E402
from third_party.checkpoints import read_safetensors, read_state_dict  # noqa: E402
from third_party.keymaps import convert_state_dict  # noqa: E402


def _objects():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 5, generator=g)
    return {
        "f32": torch.randn(2, 3, 4, generator=g),
        "transposed": base.t(),
        "slice": base[1:4, ::2],
        "shared_a": base,
        "f16": torch.randn(7, generator=g).half(),
        "bf16": torch.randn(3, generator=g).bfloat16(),
        "i64": torch.arange(9).reshape(3, 3),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "param": torch.nn.Parameter(torch.ones(2)),
        "nested": {"list": [torch.zeros(2), 3, "text"], "tuple": (torch.ones(1),)},
    }


def _check(a, b):
    if isinstance(b, torch.Tensor):
        ref = b.detach().float().numpy() if b.dtype == torch.bfloat16 else b.detach().numpy()
        got = a.astype(np.float32) if b.dtype == torch.bfloat16 else a
        assert isinstance(a, np.ndarray) and got.shape == ref.shape and got.dtype == ref.dtype
        np.testing.assert_array_equal(got, ref)
    elif isinstance(b, dict):
        assert set(a) == set(b)
        for k in b:
            _check(a[k], b[k])
    elif isinstance(b, (list, tuple)):
        for x, y in zip(a, b):
            _check(x, y)
    else:
        assert a == b


@pytest.mark.parametrize("zip_format", [True, False])
def test_torch_pickle_equals_torch_load(tmp_path, zip_format):
    obj = _objects()
    p = tmp_path / "x.pth"
    torch.save(obj, p, _use_new_zipfile_serialization=zip_format)
    _check(torch_pickle.load(p), obj)


def test_state_dict_of_a_module_and_wrapped_checkpoint(tmp_path, torchvision):
    m = torchvision.models.resnet18(weights=None)
    torch.save({"state_dict": m.state_dict(), "epoch": 3, "optimizer": {"lr": 0.1}}, tmp_path / "c.pth")
    sd = read_state_dict(tmp_path / "c.pth")
    ref = m.state_dict()
    assert list(sd) == list(ref)
    for k in ref:
        np.testing.assert_array_equal(sd[k], ref[k].numpy())
    variables, report = convert_state_dict("resnet18", sd)
    assert report["params"] == sum(p.numel() for p in m.parameters())


def test_safetensors_reader_against_the_package(tmp_path):
    st = pytest.importorskip("safetensors.torch")
    obj = {"a": torch.randn(3, 4), "b": torch.arange(5), "c": torch.randn(2).half(), "d": torch.randn(2, 2).bfloat16()}
    st.save_file(obj, str(tmp_path / "w.safetensors"))
    got = read_safetensors(tmp_path / "w.safetensors")
    for k, v in obj.items():
        ref = v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy()
        np.testing.assert_array_equal(got[k].astype(ref.dtype), ref)
