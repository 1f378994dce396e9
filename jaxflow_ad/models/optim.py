"""PyTorch's ``Adam(weight_decay=...)`` in optax, shared by the methods ported from PyTorch code.

``torch.optim.Adam`` with ``weight_decay`` adds ``weight_decay * param`` to the
gradient *before* the moment estimates (coupled L2, not AdamW's decoupled decay);
its bias-corrected update is ``lr * m_hat / (sqrt(v_hat) + eps)``, eps outside the
square root. In optax that is ``add_decayed_weights`` then ``scale_by_adam`` then
the (negated) learning rate; ``torch.nn.utils.clip_grad_norm_`` before the step is
``clip_by_global_norm`` in front. Used by PyramidFlow (official ``train.py``: clip
1, betas (0.5, 0.9), eps 1e-4, decay 1e-5) and NF-BMR (paper Sec. 4.2: PyTorch's
default betas and eps, decay 1e-5).
"""

from __future__ import annotations

import optax


def torch_adam(
    learning_rate: float | optax.Schedule,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    clip_norm: float | None = None,
) -> optax.GradientTransformation:
    """``clip_grad_norm_(clip_norm)`` (``None``: no clipping) then ``Adam(lr, (b1, b2), eps, weight_decay)``
    as PyTorch computes them. ``learning_rate`` may be an optax schedule of the update count."""
    if callable(learning_rate):
        last = optax.scale_by_learning_rate(learning_rate)
    else:
        last = optax.scale(-float(learning_rate))
    parts = [] if clip_norm is None else [optax.clip_by_global_norm(float(clip_norm))]
    parts += [
        optax.add_decayed_weights(float(weight_decay)),
        optax.scale_by_adam(b1=float(b1), b2=float(b2), eps=float(eps)),
        last,
    ]
    return optax.chain(*parts)
