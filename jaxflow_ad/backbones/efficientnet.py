"""EfficientNet-B0..B7 and EfficientNet-Lite0..4 in Flax linen, with one tap per block.

Architecture facts (Tan & Le 2019, "EfficientNet: Rethinking Model Scaling for
CNNs", and the TensorFlow reference's ``efficientnet_builder`` /
``efficientnet_lite_builder`` as ported by the PyPI packages ``efficientnet_pytorch``
0.7.1 and ``efficientnet_lite_pytorch`` 0.1.0, whose state_dicts we convert):

- B0 stages (repeats, kernel, stride, expand, in, out):
  (1,3,1,1,32,16) (2,3,2,6,16,24) (2,5,2,6,24,40) (3,3,2,6,40,80)
  (3,5,1,6,80,112) (4,5,2,6,112,192) (1,3,1,6,192,320); stem 3x3/2 to 32 channels,
  head 1x1 to 1280 channels, then global mean and ``fc`` to 1000 classes.
- Scaling (width, depth, native resolution): B0 (1.0,1.0,224), B1 (1.0,1.1,240),
  B2 (1.1,1.2,260), B3 (1.2,1.4,300), B4 (1.4,1.8,380), B5 (1.6,2.2,456),
  B6 (1.8,2.6,528), B7 (2.0,3.1,600); Lite0..4: (1.0,1.0,224), (1.0,1.1,240),
  (1.1,1.2,260), (1.2,1.4,280), (1.4,1.8,300). Channels ``c*w`` are rounded to a
  multiple of 8 (never below 90 % of ``c*w``); repeats become ``ceil(r*d)``.
- B-series MBConv: [1x1 expand - BN - swish] - kxk depthwise(stride) - BN - swish
  - squeeze-excitation (mean, 1x1 conv to ``max(1, int(in*0.25))`` with bias,
  swish, 1x1 conv with bias, sigmoid gate) - 1x1 project - BN, plus the input when
  stride is 1 and in == out. BN eps 1e-3. Drop-connect is off in inference.
- Lite: no squeeze-excitation, ReLU6 instead of swish, and the stem (32), the
  head (1280) and the repeats of the first and last stage are not scaled.
  B5 therefore has 39 blocks; its blocks 19, 26 and 35 end stages 4, 5, 6
  (128, 176, 304 channels at strides 16, 16, 32): the AST/MADFlow/NF-BMR taps.

Padding (``padding=``):

- ``"static"`` (default): what ``efficientnet_pytorch`` does. Every convolution
  gets TensorFlow-"same" padding computed once for the *native* resolution
  (``static_size``, default 456 for B5) and keeps it whatever the input size. At
  768x768, B5's stride-2 depthwise convs of blocks 13 (k3) and 27 (k5) are then
  padded (1,1) and (2,2) where true "same" gives (0,1) and (1,2): the features AST
  and MADFlow were trained on. Output sizes follow the torch arithmetic, which can
  differ from ``ceil(n/stride)`` for odd inputs.
- ``"same"``: true TensorFlow "same" padding for the actual input size (what
  ``Conv2dDynamicSamePadding`` and the TF reference do).

At the native size both agree. Taps (NHWC): ``stem``, ``block0`` ..
``block{N-1}``, ``head`` and, with ``include_top``, ``logits``. Computation stops
after the deepest tap asked for. BatchNorm uses the frozen running statistics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp

_B0_STAGES = (  # repeats, kernel, stride, expand, in, out
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)

_COEFFS = {
    **{
        f"efficientnet-b{i}": c
        for i, c in enumerate(
            [
                (1.0, 1.0, 224),
                (1.0, 1.1, 240),
                (1.1, 1.2, 260),
                (1.2, 1.4, 300),
                (1.4, 1.8, 380),
                (1.6, 2.2, 456),
                (1.8, 2.6, 528),
                (2.0, 3.1, 600),
            ]
        )
    },
    **{
        f"efficientnet-lite{i}": c
        for i, c in enumerate([(1.0, 1.0, 224), (1.0, 1.1, 240), (1.1, 1.2, 260), (1.2, 1.4, 280), (1.4, 1.8, 300)])
    },
}
ARCHS = tuple(_COEFFS)


def round_filters(c: int, width: float, divisor: int = 8) -> int:
    """Channel rounding of the TF reference: nearest multiple of 8, never below 90 %."""
    f = c * width
    new = max(divisor, int(f + divisor / 2) // divisor * divisor)
    if new < 0.9 * f:
        new += divisor
    return int(new)


@dataclass(frozen=True)
class BlockSpec:
    index: int
    stage: int
    kernel: int
    stride: int
    expand: int
    cin: int
    cout: int
    se_channels: int  # 0 = no squeeze-excitation

    @property
    def hidden(self) -> int:
        return self.cin * self.expand

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.cin == self.cout


@dataclass(frozen=True)
class EfficientNetConfig:
    name: str
    width: float
    depth: float
    resolution: int
    lite: bool
    stem: int
    head: int
    blocks: tuple[BlockSpec, ...]

    def channels(self) -> dict[str, int]:
        ch = {"stem": self.stem, "head": self.head, "logits": 1000}
        ch.update({f"block{b.index}": b.cout for b in self.blocks})
        return ch

    def strides(self) -> dict[str, int]:
        s, out = 2, {"stem": 2}
        for b in self.blocks:
            s *= b.stride
            out[f"block{b.index}"] = s
        out["head"] = s
        return out


def get_config(arch: str) -> EfficientNetConfig:
    if arch not in _COEFFS:
        raise ValueError(f"unknown EfficientNet {arch!r}; choose from {ARCHS}")
    w, d, res = _COEFFS[arch]
    lite = "lite" in arch
    stem = 32 if lite else round_filters(32, w)
    head = 1280 if lite else round_filters(1280, w)
    blocks, idx = [], 0
    for s, (r, k, st, e, cin, cout) in enumerate(_B0_STAGES):
        cin_s, cout_s = round_filters(cin, w), round_filters(cout, w)
        fixed = lite and s in (0, len(_B0_STAGES) - 1)
        reps = r if fixed else int(math.ceil(d * r))
        if lite and s == 0:
            cin_s = 32
        for j in range(reps):
            ci = cin_s if j == 0 else cout_s
            se = 0 if lite else max(1, int(ci * 0.25))
            blocks.append(BlockSpec(idx, s, k, st if j == 0 else 1, e, ci, cout_s, se))
            idx += 1
    return EfficientNetConfig(arch, w, d, res, lite, stem, head, tuple(blocks))


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "same" padding (low, high) for one spatial size."""
    out = -(-size // stride)
    pad = max((out - 1) * stride + kernel - size, 0)
    return pad // 2, pad - pad // 2


def static_pads(cfg: EfficientNetConfig, size: int) -> dict[str, tuple[int, int]]:
    """The padding efficientnet_pytorch fixes for each k>1 conv when built for ``size``.

    Returns ``{"stem": (lo, hi), "block{i}": (lo, hi)}`` (same for H and W).
    The size is tracked as ``ceil(size/stride)`` through the network, exactly as
    ``calculate_output_image_size`` does, whatever the real input size is later.
    """
    pads = {"stem": same_pads(size, 3, 2)}
    size = -(-size // 2)
    for b in cfg.blocks:
        pads[f"block{b.index}"] = same_pads(size, b.kernel, b.stride)
        size = -(-size // b.stride)
    return pads


class _MBConv(nn.Module):
    spec: BlockSpec
    pad: tuple[int, int] | None  # None -> "SAME" for the actual input
    lite: bool

    @nn.compact
    def __call__(self, x):
        b = self.spec
        act = jax.nn.relu6 if self.lite else nn.swish
        bn = lambda name: nn.BatchNorm(use_running_average=True, epsilon=1e-3, momentum=0.99, name=name)
        y = x
        if b.expand != 1:
            y = act(bn("bn0")(nn.Conv(b.hidden, (1, 1), use_bias=False, name="expand_conv")(y)))
        padding = "SAME" if self.pad is None else (self.pad, self.pad)
        y = nn.Conv(
            b.hidden,
            (b.kernel, b.kernel),
            strides=(b.stride, b.stride),
            padding=padding,
            feature_group_count=b.hidden,
            use_bias=False,
            name="depthwise_conv",
        )(y)
        y = act(bn("bn1")(y))
        if b.se_channels:
            s = jnp.mean(y, axis=(1, 2), keepdims=True)
            s = act(nn.Conv(b.se_channels, (1, 1), name="se_reduce")(s))
            s = nn.Conv(b.hidden, (1, 1), name="se_expand")(s)
            y = jax.nn.sigmoid(s) * y
        y = bn("bn2")(nn.Conv(b.cout, (1, 1), use_bias=False, name="project_conv")(y))
        return y + x if b.residual else y


class EfficientNet(nn.Module):
    """EfficientNet feature extractor. ``__call__(x[B,H,W,3]) -> {tap: array}`` (NHWC).

    ``arch``: ``efficientnet-b0`` .. ``-b7`` or ``efficientnet-lite0`` .. ``-lite4``.
    ``taps``: names to return (default: ``stem``, every ``block{i}`` and ``head``,
    plus ``logits`` with ``include_top``). ``padding``: ``"static"`` or ``"same"``
    (see the module docstring); ``static_size`` overrides the native resolution
    used by ``"static"``.
    """

    arch: str = "efficientnet-b5"
    taps: Sequence[str] | None = None
    include_top: bool = False
    padding: str = "static"
    static_size: int | None = None

    @nn.compact
    def __call__(self, x):
        cfg = get_config(self.arch)
        names = ["stem"] + [f"block{b.index}" for b in cfg.blocks] + ["head", "logits"]
        want = tuple(self.taps) if self.taps is not None else tuple(names if self.include_top else names[:-1])
        bad = [t for t in want if t not in names]
        if bad:
            raise ValueError(
                f"unknown taps {bad} for {self.arch} (stem, block0..block{len(cfg.blocks) - 1}, head, logits)"
            )
        if self.padding not in ("static", "same"):
            raise ValueError(f"padding must be 'static' or 'same', got {self.padding!r}")
        last = max(names.index(t) for t in want)
        pads = static_pads(cfg, self.static_size or cfg.resolution) if self.padding == "static" else None
        act = jax.nn.relu6 if cfg.lite else nn.swish
        bn = lambda name: nn.BatchNorm(use_running_average=True, epsilon=1e-3, momentum=0.99, name=name)
        out = {}

        def keep(name, v):
            if name in want:
                out[name] = v
            return names.index(name) >= last

        p = "SAME" if pads is None else (pads["stem"], pads["stem"])
        x = nn.Conv(cfg.stem, (3, 3), strides=(2, 2), padding=p, use_bias=False, name="conv_stem")(x)
        x = act(bn("bn0")(x))
        if keep("stem", x):
            return out
        for b in cfg.blocks:
            pad = None if pads is None else pads[f"block{b.index}"]
            x = _MBConv(b, pad, cfg.lite, name=f"blocks_{b.index}")(x)
            if keep(f"block{b.index}", x):
                return out
        x = act(bn("bn1")(nn.Conv(cfg.head, (1, 1), use_bias=False, name="conv_head")(x)))
        if keep("head", x):
            return out
        keep("logits", nn.Dense(1000, name="fc")(jnp.mean(x, axis=(1, 2))))
        return out
