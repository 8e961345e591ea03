"""AdamW with warm-up + cosine schedule and global-norm clipping (paper §4.8 settings by default:
β 0.9/0.95, ε 1e-8, weight decay 0.1 on every parameter as in the reference, clip 1.0)."""

from __future__ import annotations

import ml_collections
import optax

from blt_jax.errors import UserError


def schedule(optim: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warm-up from 0, then cosine to min_lr_ratio · lr at total_steps (or constant)."""
    warmup = min(optim.warmup_steps, max(total_steps - 1, 0))
    if optim.schedule == "constant":
        return optax.join_schedules([optax.linear_schedule(0.0, optim.lr, max(warmup, 1)),
                                     optax.constant_schedule(optim.lr)], [max(warmup, 1)])
    if optim.schedule != "cosine":
        raise UserError(f"optim.schedule: 'cosine' or 'constant', got {optim.schedule!r}")
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=optim.lr, warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1), end_value=optim.lr * optim.min_lr_ratio)


def make(optim: ml_collections.ConfigDict, total_steps: int) -> optax.GradientTransformation:
    if optim.lr <= 0:
        raise UserError(f"optim.lr: must be > 0, got {optim.lr}")
    return optax.chain(
        optax.clip_by_global_norm(optim.clip),
        optax.adamw(schedule(optim, total_steps), b1=optim.b1, b2=optim.b2, eps=optim.eps,
                    weight_decay=optim.weight_decay))
