"""Converter and readers without torch: errors for wrong arch / missing / extra / mis-shaped keys."""

import json
import struct

import numpy as np
import pytest

from jaxflow_ad.backbones import load_backbone
from third_party import convert as cli
from third_party.checkpoints import CheckpointError, read_safetensors, read_state_dict, unwrap
from third_party.keymaps import ConversionError, convert_state_dict, guess_arch
from third_party.torch_pickle import TorchPickleError
from third_party.torch_pickle import load as torch_pickle_load


@pytest.fixture(scope="module")
def pointmae_sd(golden_dir):
    p = golden_dir / "pointmae_weights_seed0.npz"
    if not p.is_file():
        pytest.skip(f"golden weights absent: {p}")
    return read_state_dict(p)


def test_pointmae_prefixes_and_decoder_keys_are_handled(pointmae_sd):
    plain, rep = convert_state_dict("pointmae", pointmae_sd)
    wrapped = {f"module.MAE_encoder.{k}": v for k, v in pointmae_sd.items()}
    wrapped["module.MAE_decoder.norm.weight"] = np.ones(384, np.float32)
    wrapped["module.mask_token"] = np.zeros((1, 1, 384), np.float32)
    wrapped["module.increase_dim.0.weight"] = np.zeros((96, 384, 1), np.float32)
    sd = unwrap({"base_model": wrapped, "epoch": 3, "optimizer": {"state": {}}})
    again, rep2 = convert_state_dict("pointmae", sd)
    a = plain["params"]["blocks_5"]["attn_qkv"]["kernel"]
    np.testing.assert_array_equal(again["params"]["blocks_5"]["attn_qkv"]["kernel"], a)
    np.testing.assert_array_equal(a, pointmae_sd["blocks.blocks.5.attn.qkv.weight"].T)
    assert rep2["ignored_keys"] == rep["ignored_keys"] + 3


def test_clear_errors(pointmae_sd):
    sd = dict(pointmae_sd)
    del sd["norm.bias"]
    sd["blocks.blocks.12.norm1.weight"] = np.ones(384, np.float32)
    sd["pos_embed.0.weight"] = np.zeros((64, 3), np.float32)
    with pytest.raises(ConversionError) as e:
        convert_state_dict("pointmae", sd)
    msg = str(e.value)
    assert "1 unexpected keys: blocks.blocks.12.norm1.weight" in msg
    assert "1 missing keys: params/norm/bias" in msg
    assert "pos_embed.0.weight: checkpoint (64, 3)" in msg and "(3, 128)" in msg
    with pytest.raises(ConversionError, match=r"does not match 'resnet18' \(it looks like 'pointmae'\)"):
        convert_state_dict("resnet18", pointmae_sd)


def test_cli_roundtrip_and_errors(pointmae_sd, golden_dir, tmp_path, capsys):
    src = golden_dir / "pointmae_weights_seed0.npz"
    assert cli.main(["--arch", "pointmae", "--src", str(src), "--dst", str(tmp_path / "pm")]) == 0
    assert "21,825,024 parameters" in capsys.readouterr().out
    bb = load_backbone({"arch": "pointmae", "weights": str(tmp_path / "pm.msgpack"), "num_group": 16, "group_size": 8})
    assert bb.meta["source"] == src.name and len(bb.meta["source_sha256"]) == 64
    assert cli.main(["--arch", "efficientnet-b5", "--src", str(src), "--dst", str(tmp_path / "x")]) == 2
    assert "it looks like 'pointmae'" in capsys.readouterr().err
    assert cli.main(["--arch", "effnet-b5", "--src", str(src), "--dst", str(tmp_path / "x")]) == 2
    assert "unknown backbone arch" in capsys.readouterr().err
    assert cli.main(["--arch", "resnet18", "--src", str(tmp_path / "none.pth"), "--dst", "x"]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def _write_safetensors(path, arrays):
    names = {"float32": "F32", "int64": "I64", "float16": "F16"}
    header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
    for k, a in arrays.items():
        b = np.ascontiguousarray(a).tobytes()
        header[k] = {"dtype": names[a.dtype.name], "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def test_safetensors_and_npz_readers(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "a.weight": rng.standard_normal((4, 3, 2, 2)).astype(np.float32),
        "a.num_batches_tracked": np.array(7, np.int64),
        "h": rng.standard_normal(5).astype(np.float16),
    }
    _write_safetensors(tmp_path / "w.safetensors", arrays)
    got = read_safetensors(tmp_path / "w.safetensors")
    assert list(got) == list(arrays)
    for k in arrays:
        np.testing.assert_array_equal(got[k], arrays[k])
    np.savez(tmp_path / "w.npz", **arrays)
    got = read_state_dict(tmp_path / "w.npz")
    np.testing.assert_array_equal(got["a.weight"], arrays["a.weight"])


def test_reader_errors(tmp_path):
    (tmp_path / "bad.pth").write_bytes(b"\x80\x02K\x05.")  # a pickle of 5, not a checkpoint
    with pytest.raises(TorchPickleError, match="magic"):
        torch_pickle_load(tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="no state_dict found"):
        unwrap({"epoch": 3})


def test_guess_arch_on_synthetic_keys():
    sd = {
        f"layer{s}.{b}.conv1.weight": np.zeros((64, 64, 3, 3))
        for s, n in zip(range(1, 5), (2, 2, 2, 2))
        for b in range(n)
    }
    assert guess_arch(sd) == "resnet18"
    sd = {
        f"layer{s}.{b}.conv{i}.weight": np.zeros((128, 64, 1, 1))
        for s, n in zip(range(1, 5), (3, 4, 6, 3))
        for b in range(n)
        for i in (1, 2, 3)
    }
    assert guess_arch(sd) == "wide_resnet50_2"
