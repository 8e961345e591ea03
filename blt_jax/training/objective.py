"""What a step computes on one batch: the summed cross-entropy of any model kind's forward pass
and the counts behind bits-per-byte and the patch-buffer statistics.

Everything is returned as fp32/int32 *sums* so that micro-batches, devices and evaluation
batches combine exactly (BPB = Σ nll / ln 2 / Σ bytes, never a mean of means).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp


LN2 = math.log(2.0)


def sums(kind: Any, model: Any, batch: dict[str, jax.Array], *, patcher: Any = None,
         p_max: int = 0, rule: Any = None) -> dict[str, jax.Array]:
    """Summed nll over masked targets and the counts that normalise it.

    `kind` (model/kinds.py) runs the forward pass and adds its own counts (BLT: the patch
    buffer's); `patcher` is the frozen entropy model of an entropy-patched BLT.
    """
    logits, counts = kind.forward(model, batch, patcher=patcher, p_max=p_max, rule=rule)
    targets, mask = batch["targets"], batch["mask"]
    out = dict(counts)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    maskf = mask.astype(jnp.float32)
    out["nll"] = (nll * maskf).sum()
    out["n_targets"] = maskf.sum()
    out["n_bytes"] = (batch["nbytes"] * maskf).sum() if "nbytes" in batch else maskf.sum()
    return out


def summarize(total: dict[str, float]) -> dict[str, float]:
    """Ratios from summed counts: loss (nats/target), bpb, bytes/patch, buffer statistics."""
    out = {"loss": total["nll"] / max(total["n_targets"], 1.0),
           "bpb": total["nll"] / LN2 / max(total["n_bytes"], 1.0)}
    if "n_patches" in total:
        out["bytes_per_patch"] = total["n_positions"] / max(total["n_patches"], 1.0)
        out["patch_padding"] = 1.0 - total["n_patches"] / max(total["n_slots"], 1.0)
        out["overflow_rate"] = total["overflow_rows"] / max(total["n_rows"], 1.0)
    return out
