"""torchvision-compatible ResNet-18/34/50 and Wide ResNet-50-2 in Flax linen, with named taps.

Architecture facts (He et al. 2016, "Deep Residual Learning"; Zagoruyko &
Komodakis 2016 for the wide variant), as torchvision builds them:

- stem: 7x7 conv, stride 2, zero padding 3, no bias; BatchNorm; ReLU; 3x3 max
  pool, stride 2, padding 1 (padded with -inf);
- four stages of [2,2,2,2] (18) / [3,4,6,3] (34, 50, WRN-50-2) blocks with
  64/128/256/512 "planes"; stages 2-4 downsample in their first block;
- BasicBlock: 3x3 conv(stride) - BN - ReLU - 3x3 conv - BN, plus identity or a
  1x1 conv(stride)+BN projection, then ReLU;
- Bottleneck ("ResNet v1.5": the stride sits on the 3x3 conv): 1x1 conv to
  ``width = planes * base_width // 64`` - BN - ReLU - 3x3 conv(stride) - BN -
  ReLU - 1x1 conv to ``4 * planes`` - BN, plus projection, then ReLU. Wide
  ResNet-50-2 is the same with ``base_width = 128``;
- BatchNorm eps 1e-5; all convolutions are bias-free; ``fc`` is 512*expansion -> 1000.

Taps (NHWC): ``stem`` (after ReLU, stride 2), ``maxpool`` (stride 4),
``layer1`` .. ``layer4`` (strides 4, 8, 16, 32), and ``logits`` when
``include_top``. Inference uses the frozen running statistics; set
``use_running_average=False`` (and pass ``mutable=["batch_stats"]``) to reproduce
code that runs the torch module in ``train()`` mode (PyramidFlow's encoder). Flax
``momentum=0.9`` equals torch's ``momentum=0.1``, but the running-variance update
uses the biased batch variance where torch uses the unbiased one (factor
n/(n-1)): outputs in train mode agree, drifted running statistics differ slightly.

Parameter names follow torchvision's so the key map in ``third_party`` is
mechanical: ``conv1``, ``bn1``, ``layer{s}_{b}/{conv1,bn1,...,downsample_conv,downsample_bn}``, ``fc``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import flax.linen as nn
import jax.numpy as jnp

TAPS = ("stem", "maxpool", "layer1", "layer2", "layer3", "layer4", "logits")


@dataclass(frozen=True)
class ResNetConfig:
    block: str  # "basic" or "bottleneck"
    layers: tuple[int, ...]
    base_width: int = 64

    @property
    def expansion(self) -> int:
        return 1 if self.block == "basic" else 4

    def channels(self) -> dict[str, int]:
        e = self.expansion
        return {
            "stem": 64,
            "maxpool": 64,
            "layer1": 64 * e,
            "layer2": 128 * e,
            "layer3": 256 * e,
            "layer4": 512 * e,
            "logits": 1000,
        }


CONFIGS = {
    "resnet18": ResNetConfig("basic", (2, 2, 2, 2)),
    "resnet34": ResNetConfig("basic", (3, 4, 6, 3)),
    "resnet50": ResNetConfig("bottleneck", (3, 4, 6, 3)),
    "wide_resnet50_2": ResNetConfig("bottleneck", (3, 4, 6, 3), base_width=128),
}
STRIDES = {"stem": 2, "maxpool": 4, "layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32}


def _conv(features: int, k: int, stride: int, name: str) -> nn.Conv:
    p = (k - 1) // 2  # torch's symmetric padding, not "SAME"
    return nn.Conv(features, (k, k), strides=(stride, stride), padding=((p, p), (p, p)), use_bias=False, name=name)


class _Block(nn.Module):
    planes: int
    stride: int
    kind: str
    base_width: int
    project: bool
    use_running_average: bool

    @nn.compact
    def __call__(self, x):
        bn = lambda name: nn.BatchNorm(
            use_running_average=self.use_running_average, momentum=0.9, epsilon=1e-5, name=name
        )
        if self.kind == "basic":
            out_ch = self.planes
            y = nn.relu(bn("bn1")(_conv(self.planes, 3, self.stride, "conv1")(x)))
            y = bn("bn2")(_conv(self.planes, 3, 1, "conv2")(y))
        else:
            width = self.planes * self.base_width // 64
            out_ch = self.planes * 4
            y = nn.relu(bn("bn1")(_conv(width, 1, 1, "conv1")(x)))
            y = nn.relu(bn("bn2")(_conv(width, 3, self.stride, "conv2")(y)))
            y = bn("bn3")(_conv(out_ch, 1, 1, "conv3")(y))
        if self.project:
            x = bn("downsample_bn")(_conv(out_ch, 1, self.stride, "downsample_conv")(x))
        return nn.relu(y + x)


class ResNet(nn.Module):
    """ResNet feature extractor. ``__call__(x[B,H,W,3]) -> {tap: array}`` (NHWC).

    ``taps``: the names to return (default: every tap up to ``layer4``, plus
    ``logits`` when ``include_top``); computation stops after the deepest one asked for.
    """

    arch: str = "resnet18"
    taps: Sequence[str] | None = None
    include_top: bool = False
    use_running_average: bool = True

    @nn.compact
    def __call__(self, x):
        cfg = CONFIGS[self.arch]
        want = tuple(self.taps) if self.taps is not None else (TAPS if self.include_top else TAPS[:-1])
        bad = [t for t in want if t not in TAPS]
        if bad:
            raise ValueError(f"unknown ResNet taps {bad}; choose from {TAPS}")
        last = max(TAPS.index(t) for t in want)
        out = {}

        def keep(name, v):
            if name in want:
                out[name] = v
            return TAPS.index(name) >= last

        x = nn.Conv(64, (7, 7), strides=(2, 2), padding=((3, 3), (3, 3)), use_bias=False, name="conv1")(x)
        x = nn.BatchNorm(use_running_average=self.use_running_average, momentum=0.9, epsilon=1e-5, name="bn1")(x)
        x = nn.relu(x)
        if keep("stem", x):
            return out
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        if keep("maxpool", x):
            return out
        in_ch = 64
        for s, n in enumerate(cfg.layers):
            planes = 64 * 2**s
            for b in range(n):
                stride = 2 if (s > 0 and b == 0) else 1
                project = b == 0 and (stride != 1 or in_ch != planes * cfg.expansion)
                x = _Block(
                    planes,
                    stride,
                    cfg.block,
                    cfg.base_width,
                    project,
                    self.use_running_average,
                    name=f"layer{s + 1}_{b}",
                )(x)
                in_ch = planes * cfg.expansion
            if keep(f"layer{s + 1}", x):
                return out
        x = nn.Dense(1000, name="fc")(jnp.mean(x, axis=(1, 2)))
        keep("logits", x)
        return out
