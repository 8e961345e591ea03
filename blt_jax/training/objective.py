"""What a step computes on one batch: the forward pass of any model kind, the summed
cross-entropy and the counts behind bits-per-byte and the patch-buffer statistics.

Everything is returned as fp32/int32 *sums* so that micro-batches, devices and evaluation
batches combine exactly (BPB = Σ nll / ln 2 / Σ bytes, never a mean of means).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from blt_jax.text import patching
from blt_jax.model.blt import patch_from_ids

LN2 = math.log(2.0)


def patches_for(batch: dict[str, jax.Array], rule: patching.PatchRule, entropy_model: Any,
                p_max: int) -> patching.PatchBuffer:
    """Given patch lengths, else stored entropies (preprocessed data), else the entropy model.

    A batch may carry ``patch_lengths`` (B, P) summing to N + 1 per row (include-next, first
    patch 1): the step then trains on exactly those patches (benchmarks, external patchers).
    """
    if "patch_lengths" in batch:
        lengths = batch["patch_lengths"].astype(jnp.int32)
        patch_ids, decoder_ids = patching.patch_ids_from_lengths(lengths, batch["ids"].shape[1])
        return patching.PatchBuffer(lengths, patch_ids, decoder_ids,
                                    jnp.zeros(lengths.shape[:1], jnp.int32))
    if "entropies" in batch and rule.needs_entropies:
        return patching.patch_buffer(p_max=p_max, ids=batch["ids"], entropies=batch["entropies"],
                                     rule=rule)
    return patch_from_ids(rule, entropy_model, batch["ids"], p_max)


def sums(model: Any, batch: dict[str, jax.Array], *, kind: str, entropy_model: Any = None,
         p_max: int = 0, rule: patching.PatchRule | None = None) -> dict[str, jax.Array]:
    """Summed nll over masked targets and the counts that normalise it."""
    ids, targets, mask = batch["ids"], batch["targets"], batch["mask"]
    out: dict[str, jax.Array] = {}
    if kind == "blt":
        buf = patches_for(batch, rule, entropy_model, p_max)
        logits = model(ids, buf.lengths)
        n = ids.shape[1]
        starts = jnp.cumsum(buf.lengths, axis=-1) - buf.lengths
        # a patch counts if it starts on a real byte (not the virtual position, not padding 0)
        start_ids = jnp.take_along_axis(ids, jnp.clip(starts, 0, n - 1), axis=1)
        real = (buf.lengths > 0) & (starts < n) & (start_ids != 0)
        out["n_patches"] = real.sum().astype(jnp.float32)
        out["n_positions"] = (ids != 0).sum().astype(jnp.float32)
        out["n_slots"] = jnp.float32(buf.lengths.size)
        out["overflow_rows"] = (buf.overflow > 0).sum().astype(jnp.float32)
        out["n_rows"] = jnp.float32(ids.shape[0])
    else:
        logits = model(ids)
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
