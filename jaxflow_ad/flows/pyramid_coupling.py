"""Pyramid coupling blocks and the official stacking schedule (PyramidFlow Sec. 3.2-3.3, Fig. 3(c-e)).

A block transforms one pyramid level (the *target*) conditioned on its
neighbour level(s), then mixes the target's channels with a PLU 1x1 conv:

* ``"up"`` (official ``FlowBlock(direct='up')``): target level ``start``
  (finer) conditioned on level ``start+1``, upsampled by nearest repetition.
* ``"down"`` (``FlowBlock(direct='down')``): target level ``start+1``
  (coarser) conditioned on level ``start``. The subnet runs at the *fine*
  resolution (volume norm statistics there too) and ``(s, t)`` are resampled
  to the coarse grid by taking pixel ``(2i, 2j)``. Under CVN or no volume norm
  only those pixels matter, so by default the last conv is evaluated with
  stride 2 (identical result, 3/4 of that conv saved); under SVN the mean needs
  every fine pixel and the full conv runs.
* ``"dual"`` (``FlowBlock2``, Fig. 3(d)): target level ``start+1``
  conditioned on both neighbours, ``concat[nearest(x_start), nearest(x_start+2)]``
  (2C channels into the subnet, C log-scales and C shifts out).

Each block: ``z = LU(exp(s) * x + t)``; per-sample
``logdet = sum(s) + H*W*sum(lu_s)`` over the target level (Eq. 5, 7).
The paper (Sec. 3.2, "Implementation") says *bilinear* interpolation matches
the shapes; the official code uses nearest, which we follow (parity).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from jaxflow_ad.flows.coupling import AffineParams, affine_forward, affine_inverse, sum_per_sample
from jaxflow_ad.flows.lu_conv import InvConv1x1LU
from jaxflow_ad.flows.pyramid import nearest_down2, resize_nearest

KINDS = ("up", "down", "dual")


def pyramid_schedule(levels: int, stacks: int) -> list[tuple[str, int]]:
    """The official block order: ``stacks`` repetitions of one stack.

    One stack visits ``start = 0, 2, 4, ...`` (a dual block while ``start+2 <
    L``, else a 'down' block on the last pair), then an 'up' block on level 0,
    then ``start = 1, 3, ...`` likewise, so every level is transformed exactly
    once per stack. L=4: dual(0), down(2), up(0), dual(1).
    """
    if levels < 2:
        raise ValueError(f"PyramidFlow needs at least 2 pyramid levels, got model.levels={levels}")
    out: list[tuple[str, int]] = []
    for _ in range(stacks):
        for range_start in (0, 1):
            if range_start == 1:
                out.append(("up", 0))
            for s in range(range_start, levels, 2):
                if s + 2 < levels:
                    out.append(("dual", s))
                elif s + 1 < levels:
                    out.append(("down", s))
    return out


class PyramidCoupling(nn.Module):
    """One pyramid coupling block acting on a tuple of NHWC levels (finest first)."""

    kind: str
    start: int
    channels: int
    ksize: int = 7
    volume_norm: str = "CVN"
    clamp: float = 2.0
    fast_down: bool = True
    conv_impl: str = "xla"
    up_polyphase: bool = True

    def setup(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown pyramid block kind {self.kind!r}; use one of {KINDS}")
        c = self.channels
        stride = 2 if (self.kind == "down" and self.fast_down and self.volume_norm != "SVN") else 1
        self.affine = AffineParams(
            c, 2 * c, self.ksize, self.clamp, self.volume_norm, last_stride=stride, conv_impl=self.conv_impl
        )
        self.lu = InvConv1x1LU(volume_norm=self.volume_norm != "none")

    @property
    def target(self) -> int:
        return self.start if self.kind == "up" else self.start + 1

    def _affine(self, levels, train, update_stats):
        tgt = levels[self.target]
        size = tgt.shape[1:3]
        if self.kind == "up":
            cond = levels[self.start + 1]
            if self.up_polyphase and cond.shape[1] * 2 == size[0] and cond.shape[2] * 2 == size[1]:
                return self.affine(cond, train, update_stats, upsampled=True)  # same function, cheaper
            return self.affine(resize_nearest(cond, size), train, update_stats)
        if self.kind == "dual":
            cond = jnp.concatenate(
                [resize_nearest(levels[self.start], size), resize_nearest(levels[self.start + 2], size)], axis=-1
            )
            return self.affine(cond, train, update_stats)
        s, t = self.affine(levels[self.start], train, update_stats)
        if s.shape[1:3] != size:  # full-resolution subnet: keep pixel (2i, 2j)
            s, t = nearest_down2(s), nearest_down2(t)
        return s, t

    @staticmethod
    def _no_condition(cond):
        if cond is not None:
            raise ValueError("PyramidCoupling takes no condition (its subnet is conditioned on the other levels)")

    def forward(self, levels, cond=None, *, train: bool = False):
        self._no_condition(cond)
        levels = tuple(levels)
        s, t = self._affine(levels, train, True)
        z, ld_lu = self.lu(affine_forward(levels[self.target], s, t))
        out = levels[: self.target] + (z,) + levels[self.target + 1 :]
        return out, sum_per_sample(s) + ld_lu

    def inverse(self, levels, cond=None, *, train: bool = False):
        self._no_condition(cond)
        levels = tuple(levels)
        y, ld_lu = self.lu(levels[self.target], inverse=True)
        # The conditioning levels are unchanged, so (s, t) are recomputed exactly.
        s, t = self._affine(levels, train, False)
        out = levels[: self.target] + (affine_inverse(y, s, t),) + levels[self.target + 1 :]
        return out, ld_lu - sum_per_sample(s)
