"""PyramidFlow's official checkpoints (``PyramidFlow.state_dict()`` of the official
code, ``nf.moduleslst.{i}...``, ``inconv.weight``) -> ``(params, model_state)`` of
:class:`jaxflow_ad.models.pyramidflow.PyramidFlowNet`.

Pure NumPy on a state dict already read (``third_party.checkpoints.read_state_dict``
reads ``.pth`` files without torch); the golden parity tests use it to load the
official weights.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxflow_ad.models.pyramidflow import PyramidFlowNet

__all__ = ["from_official_state_dict", "nchw_to_nhwc", "oihw_to_hwio"]


def oihw_to_hwio(w: np.ndarray) -> np.ndarray:
    """PyTorch conv weight ``[O, I, kh, kw]`` -> flax kernel ``[kh, kw, I, O]``."""
    return np.transpose(np.asarray(w), (2, 3, 1, 0))


def nchw_to_nhwc(x: np.ndarray) -> np.ndarray:
    return np.transpose(np.asarray(x), (0, 2, 3, 1))


def from_official_state_dict(sd, net: PyramidFlowNet, params_template=None, model_state_template=None):
    """Official ``PyramidFlow.state_dict()`` (names ``nf.moduleslst.{i}...``, ``inconv.weight``) ->
    ``(params, model_state)`` of ``net``.

    Layout changes: conv weights OIHW -> HWIO; ``inconv.weight [C,3,1,1]`` ->
    ``in_proj [3, C]``; volume-norm running means NCHW -> NHWC, broadcast from
    the official initial ``(1,1,1,1)`` buffer, and taken at even pixels where
    our 'down' block runs its last conv at stride 2. Any key of ``sd`` not
    used raises, so a mismatched architecture cannot load silently.
    Entries missing from ``sd`` (e.g. gradients have no buffers) are taken from
    the templates when given.
    """
    sd = {k: np.asarray(v) for k, v in sd.items()}
    used = set()

    def take(key):
        used.add(key)
        return sd[key]

    if params_template is None or model_state_template is None:
        h = 2 ** (net.levels - 1) * 8
        params_template, model_state_template = net.init(jax.random.PRNGKey(0), (h, h, 3))
    params = jax.tree_util.tree_map(np.asarray, params_template)
    ms = jax.tree_util.tree_map(np.asarray, model_state_template)
    for i, name in enumerate(net.names):
        pre = f"nf.moduleslst.{i}."
        p = params[name]
        for ours, theirs in (("conv0", "conv.0"), ("conv1", "conv.2")):
            k = pre + f"affineParams.{theirs}.weight"
            if k in sd:
                p["affine"][ours]["kernel"] = oihw_to_hwio(take(k))
        for n in ("w_l", "w_u", "w_s"):
            if pre + f"conv1x1.{n}" in sd:
                p["lu"][n] = take(pre + f"conv1x1.{n}")
        blk = ms["blocks"][name]
        if pre + "conv1x1.w_p" in sd:
            blk["constants"]["lu"]["perm"] = take(pre + "conv1x1.w_p")
            blk["constants"]["lu"]["sign"] = take(pre + "conv1x1.s_sign")
            for n in ("u_mask", "l_mask", "l_eye"):  # derivable; checked, not stored
                used.add(pre + f"conv1x1.{n}")
        k = pre + "affineParams.norm.running_mean"
        if k in sd and "volume_norm" in blk:
            rm = nchw_to_nhwc(take(k))
            ours = blk["volume_norm"]["affine"]["norm"]["running_mean"]
            if rm.shape[1] > ours.shape[1]:  # fine grid -> the even pixels we keep
                step = rm.shape[1] // ours.shape[1]
                rm = rm[:, ::step, ::step]
            blk["volume_norm"]["affine"]["norm"]["running_mean"] = np.broadcast_to(rm, ours.shape).astype(np.float32)
    if "inconv.weight" in sd:
        ms["encoder"]["in_proj"] = take("inconv.weight")[:, :, 0, 0].T
    extra = sorted(set(sd) - used)
    if extra:
        raise KeyError(
            f"official state dict has keys this PyramidFlowNet does not use (wrong levels/stacks?): "
            f"{extra[:5]}{' ...' if len(extra) > 5 else ''}"
        )
    cast = lambda t: jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), t)
    return cast(params), cast(ms)
