"""MADFlow's frequency-spatial enhancement (FSE; paper Sec. 3.3, Eq. 11-14; official ``DynamicFSFilter``).

For an input ``F_in [B, H, W, C]`` and ``C1 = max(1, round(expand * C))``::

    X   = StarReLU(Linear_{C -> C1}(F_in))                                     (Eq. 11)
    r_f = softmax_n GAP(Conv1x1 -> ReLU -> Conv3x3 -> ReLU -> Conv1x1)(F_in)   [B, N, C1]
    F_f = irfft2(rfft2(X) * sum_n r_f[b, n, c] B_f[u, v, n])   (ortho norms)   (Eq. 12)
    r_s = softmax_n GAP(DCN3x3 -> ReLU -> DCN3x3)(F_in)                        [B, N, C1]
    F_s = X * sum_n r_s[b, n, c] B_s[h, w, n]                                  (Eq. 13)
    out = Linear_{C1 -> C}(combine(F_f, F_s))                                  (Eq. 14)

``B_f`` is a bank of ``N`` complex half-spectrum filters shared over channels (DFFormer's dynamic
filter, Tatsunami and Taki 2024; GFNet's global filter, Rao et al. 2021), ``B_s`` a bank of ``N``
real spatial maps; the routing MLPs reduce to ``max(C // 2, 1)`` channels, then produce
``N * C1`` logits (channel ``n * C1 + c``) that are averaged over the map and normalised with a
softmax over the ``N`` filters. The frequency branch is exactly a per-(sample, channel)
circular convolution of ``X`` with ``filter_kernel(W_f)`` (:mod:`jaxflow_ad.spectral.global_filter`).

Choices where the paper and the code differ or are silent (see ``shared/notes/madflow*.md``):

* ``expand``: the paper's Tab. 9 is best at ``C1 = C`` (1.0, the default); the code uses 2.
* ``num_filters``: ``N = 3`` (paper); the code uses 4.
* The routing MLP's middle conv has no kernel size in the code (it cannot run); it is 3x3 here
  (zero 'same' padding). Averaging before the last 1x1 conv equals averaging after it (the
  conv is affine), so the last layer is applied to the pooled vector.
* ``mode``: ``"gate"`` (default) is the paper's gated fusion, a per-pixel softmax over two
  logits of a 1x1 conv on ``concat(F_f, F_s)``, giving ``g0 F_f + g1 F_s``; ``"add"`` is the
  code's ``F_f + F_s`` (Tab. 8 "add"); ``"freq"`` / ``"spatial"`` keep one branch (Tab. 8), and
  the other branch's parameters are not created.
* ``dynamic=False`` replaces both routings by the uniform ``1 / N`` (Tab. 8 "no-DE"; the
  routing networks are not created); ``deformable=False`` uses plain 3x3 convs in the spatial
  routing (Tab. 8 "no-DConv").
* The filter banks are sized from the input at initialisation (the code hard-codes 24x24); an
  input of another spatial size is refused.

Initialisation: banks ``N(0, freq_std^2)`` (real and imaginary parts) and ``N(0, spatial_std^2)``
as the code's ``randn * 0.02`` / ``randn * 0.03``; linear layers and convs PyTorch's default;
the DCNs as :class:`jaxflow_ad.nn.deform_conv.DeformConv2d`.

Parameters: ``proj_in``, ``act`` (StarReLU), ``freq_route``, ``freq_bank [H, W//2+1, N, 2]``,
``spatial_route``, ``spatial_bank [H, W, N]``, ``gate``, ``proj_out``.

Intermediates: the module ``sow`` s ``x`` (X), ``freq_routing`` / ``spatial_routing``
(``[B, N, C1]``) and ``freq`` / ``spatial`` (``F_f``, ``F_s``) into the ``"intermediates"``
collection for the branches it runs; :func:`fse_intermediates` returns them.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxflow_ad.flows.coupling import torch_default_bias_init, torch_default_kernel_init
from jaxflow_ad.nn.blocks import StarReLU
from jaxflow_ad.nn.mapping import torch_conv
from jaxflow_ad.spectral.global_filter import global_filter, mix_filter_bank

MODES = ("gate", "add", "freq", "spatial")
_HIGHEST = jax.lax.Precision.HIGHEST


# ----------------------------------------------------------------------------- pure parts
def routing_softmax(logits: jax.Array, num_filters: int) -> jax.Array:
    """``[B, N * C1]`` pooled routing logits (channel ``n * C1 + c``) -> ``[B, N, C1]`` weights,
    softmax over the ``N`` filters (DFFormer's ``view(B, N, -1).softmax(dim=1)``)."""
    b, nc = logits.shape
    if nc % num_filters:
        raise ValueError(f"{nc} routing logits do not split into {num_filters} filters")
    return jax.nn.softmax(logits.reshape(b, num_filters, nc // num_filters), axis=1)


def uniform_routing(batch: int, num_filters: int, channels: int) -> jax.Array:
    """The static routing ``1 / N`` of every filter, ``[B, N, C1]`` (Tab. 8 "no-DE")."""
    return jnp.full((batch, num_filters, channels), 1.0 / num_filters, jnp.float32)


def complex_bank(bank: jax.Array) -> jax.Array:
    """``[..., 2]`` real parameter (real, imaginary) -> complex64 ``[...]``."""
    return jax.lax.complex(bank[..., 0].astype(jnp.float32), bank[..., 1].astype(jnp.float32))


def frequency_branch(x: jax.Array, bank: jax.Array, routing: jax.Array) -> jax.Array:
    """``F_f = irfft2(rfft2(X) * W_f)``, ``W_f = mix_filter_bank(bank, routing)`` (Eq. 12).

    ``x [B, H, W, C1]``, ``bank`` complex ``[H, W//2+1, N]``, ``routing [B, N, C1]``.
    """
    return global_filter(x, mix_filter_bank(bank, routing))


def spatial_branch(x: jax.Array, bank: jax.Array, routing: jax.Array) -> jax.Array:
    """``F_s = X * sum_n routing[b, n, c] bank[h, w, n]`` (Eq. 13); ``bank`` real ``[H, W, N]``."""
    return x * mix_filter_bank(bank, routing).astype(x.dtype)


def gated_sum(f_freq: jax.Array, f_spatial: jax.Array, logits: jax.Array) -> jax.Array:
    """``g0 * F_f + g1 * F_s`` with ``(g0, g1) = softmax(logits [B, H, W, 2])`` per pixel."""
    g = jax.nn.softmax(logits, axis=-1)
    return g[..., 0:1] * f_freq + g[..., 1:2] * f_spatial


# ----------------------------------------------------------------------------- modules
def _dense(features: int, cin: int, name: str) -> nn.Dense:
    return nn.Dense(
        features,
        kernel_init=torch_default_kernel_init,
        bias_init=torch_default_bias_init(cin),
        precision=_HIGHEST,
        name=name,
    )


class FrequencyRouting(nn.Module):
    """``softmax_n GAP(Conv1x1 -> ReLU -> Conv3x3 -> ReLU -> Conv1x1)``: ``[B, H, W, C] -> [B, N, C1]``.

    Hidden width ``max(C // 2, 1)``; the last 1x1 conv (``conv_2``, stored as a dense layer) is
    applied after the global average, which is the same function.
    """

    num_filters: int
    channels: int

    @nn.compact
    def __call__(self, f_in: jax.Array) -> jax.Array:
        c = f_in.shape[-1]
        hidden = max(c // 2, 1)
        h = nn.relu(torch_conv(hidden, 1, c, "conv_0", _HIGHEST)(f_in))
        h = nn.relu(torch_conv(hidden, 3, hidden, "conv_1", _HIGHEST)(h))
        logits = _dense(self.num_filters * self.channels, hidden, "conv_2")(jnp.mean(h, axis=(1, 2)))
        return routing_softmax(logits, self.num_filters)


class SpatialRouting(nn.Module):
    """``softmax_n GAP(DCN3x3 -> ReLU -> DCN3x3)``: ``[B, H, W, C] -> [B, N, C1]`` (hidden ``max(C // 2, 1)``).

    ``deformable=False`` uses plain 3x3 convs (zero 'same' padding) instead of the modulated
    deformable ones (Tab. 8 "no-DConv").
    """

    num_filters: int
    channels: int
    deformable: bool = True

    @nn.compact
    def __call__(self, f_in: jax.Array) -> jax.Array:
        c = f_in.shape[-1]
        hidden = max(c // 2, 1)
        out = self.num_filters * self.channels
        if self.deformable:
            from jaxflow_ad.nn.deform_conv import DeformConv2d  # imported on use (Tab. 8 "no-DConv" needs none)

            layer0, layer1 = DeformConv2d(hidden, 3, name="dcn_0"), DeformConv2d(out, 3, name="dcn_1")
        else:
            layer0, layer1 = (
                torch_conv(hidden, 3, c, "conv_0", _HIGHEST),
                torch_conv(out, 3, hidden, "conv_1", _HIGHEST),
            )
        h = layer1(nn.relu(layer0(f_in)))
        return routing_softmax(jnp.mean(h, axis=(1, 2)), self.num_filters)


class FSE(nn.Module):
    """Frequency-spatial enhancement ``[B, H, W, C] -> [B, H, W, C]`` (module docstring).

    Attributes:
      expand: ``C1 = max(1, round(expand * C))`` (paper Tab. 9: 1 is best; code: 2).
      num_filters: ``N`` filters per bank (paper 3; code 4).
      mode: ``"gate"`` (paper), ``"add"`` (code), ``"freq"`` or ``"spatial"`` (Tab. 8).
      dynamic: input-dependent routing; ``False`` is the uniform ``1 / N`` (Tab. 8 "no-DE").
      deformable: DCNs in the spatial routing; ``False`` plain convs (Tab. 8 "no-DConv").
      freq_std, spatial_std: standard deviations of the banks' normal initialisation.
    """

    expand: float = 1.0
    num_filters: int = 3
    mode: str = "gate"
    dynamic: bool = True
    deformable: bool = True
    freq_std: float = 0.02
    spatial_std: float = 0.03

    def _bank(self, name: str, std: float, shape: tuple[int, ...]) -> jax.Array:
        if self.has_variable("params", name):
            stored = self.get_variable("params", name).shape
            if tuple(stored) != shape:
                raise ValueError(
                    f"FSE's {name} was initialised as {tuple(stored)} for another input size; this input needs "
                    f"{shape}. The global filters are tied to the feature map size: re-initialise for it."
                )
        return self.param(name, nn.initializers.normal(std), shape, jnp.float32)

    @nn.compact
    def __call__(self, f_in: jax.Array) -> jax.Array:
        if self.mode not in MODES:
            raise ValueError(f"FSE.mode must be one of {MODES}, got {self.mode!r}")
        if self.num_filters < 1:
            raise ValueError(f"FSE.num_filters must be >= 1, got {self.num_filters}")
        if f_in.ndim != 4:
            raise ValueError(f"FSE expects NHWC input, got shape {f_in.shape}")
        b, h, w, c = f_in.shape
        c1 = max(1, int(round(self.expand * c)))
        n = self.num_filters
        f_in = f_in.astype(jnp.float32)

        x = StarReLU(name="act")(_dense(c1, c, "proj_in")(f_in))
        self.sow("intermediates", "x", x)

        f_freq = f_spatial = None
        if self.mode != "spatial":
            if self.dynamic:
                r_f = FrequencyRouting(n, c1, name="freq_route")(f_in)
            else:
                r_f = uniform_routing(b, n, c1)
            bank = complex_bank(self._bank("freq_bank", self.freq_std, (h, w // 2 + 1, n, 2)))
            f_freq = frequency_branch(x, bank, r_f)
            self.sow("intermediates", "freq_routing", r_f)
            self.sow("intermediates", "freq", f_freq)
        if self.mode != "freq":
            if self.dynamic:
                r_s = SpatialRouting(n, c1, self.deformable, name="spatial_route")(f_in)
            else:
                r_s = uniform_routing(b, n, c1)
            f_spatial = spatial_branch(x, self._bank("spatial_bank", self.spatial_std, (h, w, n)), r_s)
            self.sow("intermediates", "spatial_routing", r_s)
            self.sow("intermediates", "spatial", f_spatial)

        if self.mode == "freq":
            y = f_freq
        elif self.mode == "spatial":
            y = f_spatial
        elif self.mode == "add":
            y = f_freq + f_spatial
        else:
            logits = torch_conv(2, 1, 2 * c1, "gate", _HIGHEST)(jnp.concatenate([f_freq, f_spatial], axis=-1))
            y = gated_sum(f_freq, f_spatial, logits)
        return _dense(c, c1, "proj_out")(y)


def fse_intermediates(model: FSE, variables, f_in: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Run ``model`` and return ``(output, {name: value})`` of what it sows: ``x``, and for the
    branches of its mode ``freq_routing``, ``freq``, ``spatial_routing``, ``spatial``."""
    out, state = model.apply(variables, f_in, mutable=["intermediates"])
    inter = state.get("intermediates", {})
    return out, {k: v[-1] for k, v in inter.items()}
