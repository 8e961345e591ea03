"""Patchers: where patches start (spec §3).

A rule is a frozen :class:`PatchRule`. Every rule is written once, position by position
(:func:`rule_starts`), and evaluated as a start mask over positions ``0..T-1`` (``T = L + 1`` with
the virtual next-byte position, ``include_next=True``; ``T = L`` otherwise) either with numpy
(host: data pipelines, test oracle, variable-width output) or with jax.numpy inside jit (device:
a static ``P_max``-wide buffer, see :func:`patch_buffer`), or one position at a time by the
incremental decoder.

Rules (``H`` entropies in nats, ``ids`` BLT ids; position ``p`` starts a patch iff):

- ``global``    p < 2, or H[p-1] > threshold                                  (released models)
- ``monotonic`` p < 3, or H[p-1] - H[p-2] > threshold       (approximate monotonic; threshold = θ_r)
- ``combined``  p < 3, or p >= 4 and H[p-1] > threshold and H[p-1] - H[p-2] > threshold_add
- ``space``     p < 2, or byte p-1 ends a word: a special id, or a space-like byte after a
                non-space-like one (space-like: not [0-9A-Za-z] and not a UTF-8 continuation byte)
- ``bpe``       p < 2, or ids[p-1] is the BPE delimiter (id 3) and p-1 < L-1: as the reference
                (spec §3.7, ``tokens[:, :-1]``), a delimiter at L-1 never opens the virtual patch
- ``bpe_incremental`` the same without the L-1 exception: a prefix patches exactly like the
                longer row (prefix-consistent; what incremental decoding does for both modes)
- ``byte``      always (every patch is one byte)
- ``static``    p == 0, or (p - 1) % patch_size == 0. Unlike the reference (whose static mode needs
                a BOE prefix), the [BOS] patch stays on its own so the rows fit the BLT forward.

``max_patch_length = m`` then adds starts at offsets m, 2m, ... inside every patch.
All rules are incremental: a decision at position p reads only bytes/entropies before p. The
reference's top-k entropy mode and its model-based ``bpe_patcher`` are not ported (non-causal /
research leftovers).

Overflow policy of the static buffer: a row keeps its first ``P_max`` starts; every later start
is dropped, so the last buffered patch absorbs the rest of the row. Whether a start is kept
depends only on how many starts precede it, hence only on earlier bytes (causal), and no byte is
ever dropped. The number of dropped starts is reported as ``overflow``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterator, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from blt_jax.errors import UserError
from blt_jax.text.tokenizer import BPE_DELIM_ID, OFFSET

ENTROPY_MODES = ("global", "monotonic", "combined")
MODES = ENTROPY_MODES + ("space", "bpe", "bpe_incremental", "byte", "static")
DEFAULT_THRESHOLD = 1.335442066192627


# --------------------------------------------------------------------------------------------
# Validation


def check_rule(mode: str, threshold: float | None = DEFAULT_THRESHOLD,
               threshold_add: float | None = None, max_patch_length: int | None = None,
               patch_size: float | None = 4.5) -> None:
    """Raises ValueError naming the argument that makes a patching rule unusable."""
    if mode not in MODES:
        raise UserError(f"mode: unknown patching mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode in ENTROPY_MODES and (threshold is None or not math.isfinite(threshold)):
        raise UserError(f"threshold: mode {mode!r} needs a finite threshold, got {threshold!r}")
    if mode == "combined" and (threshold_add is None or not math.isfinite(threshold_add)):
        raise UserError("threshold_add: mode 'combined' needs a finite threshold_add")
    if max_patch_length is not None and int(max_patch_length) < 1:
        raise UserError(f"max_patch_length: must be >= 1 or None, got {max_patch_length}")
    if mode == "static" and (patch_size is None or int(patch_size) != patch_size or patch_size < 1):
        raise UserError(f"patch_size: static patching needs a whole number >= 1, got {patch_size}")


@dataclasses.dataclass(frozen=True)
class PatchRule:
    """One patching rule: a mode of :data:`MODES` and its parameters, validated when made.

    Frozen and hashable, so jit and compile caches key on it. It also reads as a mapping
    (``rule["mode"]``, ``dict(rule)``, ``**rule``) for code written against the old dict form.
    """

    mode: str = "global"
    threshold: float | None = DEFAULT_THRESHOLD
    threshold_add: float | None = None
    max_patch_length: int | None = None
    patch_size: float | None = 4.5

    def __post_init__(self) -> None:
        check_rule(self.mode, self.threshold, self.threshold_add, self.max_patch_length,
                   self.patch_size)

    @property
    def needs_entropies(self) -> bool:
        """Entropy modes read the entropy model's scores; the others read ids only."""
        return self.mode in ENTROPY_MODES

    def replace(self, **fields: Any) -> PatchRule:
        return dataclasses.replace(self, **fields)

    def keys(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self))

    def __getitem__(self, key: str) -> Any:
        if key not in self.keys():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())


def as_rule(rule: PatchRule | Mapping[str, Any] | None = None, **fields: Any) -> PatchRule:
    """A PatchRule from a rule (or a mapping of its fields), keyword fields overriding it."""
    merged = dict(rule or {})
    merged.update(fields)
    return PatchRule(**merged)


def _as_rows(name: str, arr: Any, dtype: Any) -> tuple[np.ndarray, bool]:
    a = np.asarray(arr)
    if a.ndim not in (1, 2):
        raise UserError(f"{name}: expected a 1-D or 2-D array, got shape {a.shape}")
    return a.astype(dtype, copy=False).reshape((1, -1) if a.ndim == 1 else a.shape), a.ndim == 1


def _check_entropies(h: np.ndarray) -> None:
    if np.isnan(h).any():
        raise UserError("entropies: contains NaN; recompute them (the entropy model diverged?)")
    if (h < 0).any():
        raise UserError(f"entropies: must be >= 0 nats, found {h.min():.4g}")


# --------------------------------------------------------------------------------------------
# The rules, written once for numpy and jax.numpy


def _cummax(xp: Any, x: Any) -> Any:
    return np.maximum.accumulate(x, axis=-1) if xp is np else jax.lax.cummax(x, axis=x.ndim - 1)


def _spacelike(xp: Any, ids: Any) -> Any:
    b = ids - OFFSET
    word = (((b >= ord("0")) & (b <= ord("9"))) | ((b >= ord("A")) & (b <= ord("Z")))
            | ((b >= ord("a")) & (b <= ord("z"))) | ((b >= 0x80) & (b < 0xC0)))
    return ~word


def _shift_right(xp: Any, x: Any, n: int, fill: Any) -> Any:
    """y[..., p] = x[..., p - n] (fill where p < n); keeps the last axis length."""
    n = min(n, x.shape[-1])
    pad = xp.full(x.shape[:-1] + (n,), fill, dtype=x.dtype)
    return xp.concatenate([pad, x[..., : x.shape[-1] - n]], axis=-1)


def rule_starts(rule: PatchRule, xp: Any, pos: Any, h1: Any = None, h2: Any = None,
                x1: Any = None, x2: Any = None, virtual: Any = False) -> Any:
    """Does position `pos` open a patch by the rule itself (before max_patch_length splits)?

    The one statement of every rule, read only from what precedes `pos`: h1 = H[pos-1],
    h2 = H[pos-2], x1 = ids[pos-1], x2 = ids[pos-2] (any value where pos is too small to have
    them); `virtual` marks the next-byte position L (only the reference ``bpe`` rule reads it).
    :func:`start_mask` evaluates it over whole rows, incremental decoding per position.
    """
    mode, th = rule.mode, rule.threshold
    if mode == "global":
        return (pos < 2) | (h1 > th)
    if mode == "monotonic":
        return (pos < 3) | (h1 - h2 > th)
    if mode == "combined":
        return (pos < 3) | ((pos >= 4) & (h1 > th) & (h1 - h2 > rule.threshold_add))
    if mode == "space":
        sl1, sl2 = _spacelike(xp, x1), _spacelike(xp, x2) | (pos < 2)
        return (pos < 2) | (x1 < OFFSET) | (sl1 & ~sl2)
    if mode == "bpe":
        return (pos < 2) | ((x1 == BPE_DELIM_ID) & xp.logical_not(virtual))
    if mode == "bpe_incremental":
        return (pos < 2) | (x1 == BPE_DELIM_ID)
    if mode == "byte":
        return pos >= 0
    if mode == "static":
        return (pos == 0) | ((pos - 1) % int(rule.patch_size) == 0)
    raise ValueError(f"mode: unknown patching mode {mode!r}")


def defers_close(rule: PatchRule) -> bool:
    """Can a position open a patch once real that it did not open as the virtual position?

    The reference ``bpe`` rule: a delimiter at L-1 opens position L only after byte L arrives, so
    incremental decoding closes that patch one byte late (before the byte's own step).
    """
    return rule.mode == "bpe"


def split_long(rule: PatchRule, starts: Any, offset: Any) -> Any:
    """Adds the max_patch_length starts: `offset` is the distance to the last rule start."""
    if rule.max_patch_length is None:
        return starts
    return starts | ((offset > 0) & (offset % int(rule.max_patch_length) == 0))


def start_mask(xp: Any, rule: PatchRule, *, length: int, include_next: bool, ids: Any = None,
               entropies: Any = None, batch: int = 1, row_lengths: Any = None) -> Any:
    """Boolean (B, T) mask of patch starts. Inputs are (B, L); `xp` is numpy or jax.numpy.

    `row_lengths` (B,) puts each right-padded row's virtual position at its own length.
    """
    t_len = length + 1 if include_next else length
    pos = xp.arange(t_len)[None, :]

    def prev(x: Any, k: int, fill: Any) -> Any:
        """x[p - k] for every position p < T (fill where p < k); x has L columns."""
        x_t = xp.concatenate([x, xp.full(x.shape[:-1] + (1,), fill, x.dtype)], axis=-1)[..., :t_len]
        return _shift_right(xp, x_t, k, fill)

    reads: dict[str, Any] = {}
    if rule.needs_entropies:
        h = entropies.astype(xp.float32)
        reads.update(h1=prev(h, 1, xp.float32(0)), h2=prev(h, 2, xp.float32(0)))
    if ids is not None:
        fill = xp.zeros((), ids.dtype)
        reads.update(x1=prev(ids, 1, fill), x2=prev(ids, 2, fill))
    end = length if row_lengths is None else row_lengths[:, None]
    virtual = (pos == end) if include_next else xp.zeros_like(pos, dtype=bool)
    starts = xp.broadcast_to(rule_starts(rule, xp, pos, virtual=virtual, **reads),
                             (batch, t_len))
    if rule.max_patch_length is not None:
        starts = split_long(rule, starts, pos - _cummax(xp, xp.where(starts, pos, 0)))
    return starts


# --------------------------------------------------------------------------------------------
# Host (numpy)


def lengths_from_starts(starts: np.ndarray) -> np.ndarray:
    """(B, T) start mask -> (B, P) lengths, right-padded with zeros to the widest row."""
    starts = np.atleast_2d(starts)
    rows = [np.diff(np.append(np.flatnonzero(r), r.shape[0])) for r in starts]
    out = np.zeros((len(rows), max(len(r) for r in rows)), np.int32)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def patch_lengths(ids: Any = None, entropies: Any = None, rule: PatchRule | None = None, *,
                  include_next: bool = True, **fields: Any) -> np.ndarray:
    """Host patcher for any rule. 1-D input -> 1-D lengths; 2-D -> (B, P) zero-padded.

    The rule is a :class:`PatchRule` or its fields as keywords (``mode="space"``, ...), which
    also override a given rule.
    """
    rule = as_rule(rule, **fields)
    h = one_d = None
    if rule.needs_entropies:
        if entropies is None:
            raise UserError(f"entropies: mode {rule.mode!r} needs entropies")
        h, one_d = _as_rows("entropies", entropies, np.float32)
        _check_entropies(h)
    ref = None
    if ids is not None:
        ref, one_d_ids = _as_rows("ids", ids, np.int64)
        one_d = one_d_ids if one_d is None else one_d
        if h is not None and h.shape != ref.shape:
            raise UserError(f"ids: shape {ref.shape} differs from entropies {h.shape}")
    elif rule.mode in ("space", "bpe", "bpe_incremental"):
        raise UserError(f"ids: mode {rule.mode!r} needs ids")
    shape = (h if h is not None else ref).shape if (h is not None or ref is not None) else None
    if shape is None:
        raise UserError("ids: give ids (or entropies) so the row length is known")
    starts = start_mask(np, rule, length=shape[1], include_next=include_next, ids=ref,
                        entropies=h, batch=shape[0])
    out = lengths_from_starts(starts)
    return out[0] if one_d else out


def patch_lengths_from_entropies(entropies: Any, threshold: float = DEFAULT_THRESHOLD, *,
                                 mode: str = "global", include_next: bool = True,
                                 max_patch_length: int | None = None,
                                 threshold_add: float | None = None) -> np.ndarray:
    """Entropy patching on host arrays (1-D row or (B, L) batch)."""
    if mode not in ENTROPY_MODES:
        raise UserError(f"mode: entropy patching takes one of {ENTROPY_MODES}, got {mode!r}")
    return patch_lengths(None, entropies, mode=mode, threshold=threshold,
                         threshold_add=threshold_add, include_next=include_next,
                         max_patch_length=max_patch_length)


def threshold_for_target_patch_size(entropies: Sequence[Any] | np.ndarray, target: float, *,
                                    mode: str = "global", max_patch_length: int | None = None,
                                    iters: int = 60) -> float:
    """Bisects θ so the mean bytes/patch over `entropies` (documents) is as close to `target`.

    Mean bytes/patch = Σ bytes / Σ patches with ``include_next=False`` (document patching, as in
    training). It grows monotonically with θ for the global rule, which bisection relies on.
    """
    if mode not in ("global", "monotonic"):
        raise UserError(f"mode: threshold search supports 'global' and 'monotonic', got {mode!r}")
    docs = [np.asarray(e, np.float32).reshape(-1) for e in
            (entropies if isinstance(entropies, (list, tuple)) else np.atleast_2d(entropies))]
    docs = [d for d in docs if d.size]
    if not docs:
        raise UserError("entropies: no non-empty document to measure patch sizes on")
    if not target >= 1.0:
        raise UserError(f"target: mean bytes per patch must be >= 1, got {target}")
    for d in docs:
        _check_entropies(d[None])
    n_bytes = sum(d.size for d in docs)

    def mean_size(theta: float) -> float:
        rule = PatchRule(mode, threshold=theta, max_patch_length=max_patch_length)
        n = sum(int(start_mask(np, rule, length=d.size, include_next=False,
                               entropies=d[None]).sum()) for d in docs)
        return n_bytes / n

    if mode == "global":
        lo, hi = 0.0, float(max(d.max() for d in docs)) + 1e-3
    else:
        spread = float(max(np.abs(np.diff(d)).max() if d.size > 1 else 0.0 for d in docs))
        lo, hi = -spread - 1e-3, spread + 1e-3
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if mean_size(mid) < target:
            lo = mid
        else:
            hi = mid
    # Return the end of the bracket whose mean patch size is closer to the target.
    return hi if abs(mean_size(hi) - target) <= abs(mean_size(lo) - target) else lo


# --------------------------------------------------------------------------------------------
# Device (jax.numpy, static shapes)


class PatchBuffer(NamedTuple):
    """Static-shape patching of (B, N) rows; patches cover N + 1 positions (include-next)."""

    lengths: jax.Array  # (B, P_max) int32, Σ = N + 1 per row, zero right-padding
    patch_ids: jax.Array  # (B, N) encoder patch id p(i)
    decoder_patch_ids: jax.Array  # (B, N) decoder patch id d(i) = p(i + 1) - 1
    overflow: jax.Array  # (B,) starts merged into the last patch because of P_max


def _check_p_max(p_max: int) -> None:
    if int(p_max) < 2:
        raise UserError(f"p_max: the patch buffer needs at least 2 patches, got {p_max}")


def patch_ids_from_lengths(lengths_BxP: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
    """(encoder ids p(i), decoder ids d(i) = p(i+1) - 1) for i < n, from lengths summing to n+1.

    Zero-length patches are skipped (equal prefix sums resolve to the later patch), as in the
    reference. O(N + P): a scatter of patch starts followed by a cumulative sum.
    """
    b, _ = lengths_BxP.shape
    starts_BxP = jnp.cumsum(lengths_BxP, axis=-1) - lengths_BxP
    counts_BxT = jax.vmap(lambda s: jnp.zeros((n + 1,), jnp.int32).at[s].add(1, mode="drop"))(
        starts_BxP.astype(jnp.int32))
    p_BxT = jnp.cumsum(counts_BxT, axis=-1) - 1
    return p_BxT[:, :n], p_BxT[:, 1:] - 1


def patch_buffer(*, p_max: int, ids: jax.Array | None = None, entropies: jax.Array | None = None,
                 rule: PatchRule | None = None, row_lengths: jax.Array | None = None,
                 **fields: Any) -> PatchBuffer:
    """Device patcher: (B, N) ids/entropies -> :class:`PatchBuffer` (jit-able, static shapes).

    The rule is a :class:`PatchRule` or its fields as keywords, as in :func:`patch_lengths`;
    `row_lengths` as in :func:`start_mask` (right-padded prompts).
    """
    rule = as_rule(rule, **fields)
    _check_p_max(p_max)
    ref = entropies if rule.needs_entropies else ids
    if ref is None:
        raise UserError(f"{'entropies' if rule.needs_entropies else 'ids'}: needed by mode "
                        f"{rule.mode!r}")
    if ref.ndim != 2:
        raise UserError(f"ids/entropies: expected (B, N) arrays, got shape {ref.shape}")
    b, n = ref.shape
    starts_BxT = start_mask(jnp, rule, length=n, include_next=True, ids=ids, entropies=entropies,
                            batch=b, row_lengths=row_lengths)
    rank_BxT = jnp.cumsum(starts_BxT, axis=-1) - 1
    keep_BxT = starts_BxT & (rank_BxT < p_max)
    pos_T = jnp.arange(n + 1, dtype=jnp.int32)
    start_pos_BxP = jax.vmap(lambda k, r: jnp.full((p_max + 1,), n + 1, jnp.int32).at[
        jnp.where(k, r, p_max + 1)].set(pos_T, mode="drop"))(keep_BxT, rank_BxT)
    lengths_BxP = (start_pos_BxP[:, 1:] - start_pos_BxP[:, :-1]).astype(jnp.int32)
    p_BxT = (jnp.cumsum(keep_BxT, axis=-1) - 1).astype(jnp.int32)  # no empty patches here
    patch_ids, decoder_ids = p_BxT[:, :n], p_BxT[:, 1:] - 1
    overflow_B = jnp.maximum(starts_BxT.sum(-1) - p_max, 0).astype(jnp.int32)
    return PatchBuffer(lengths_BxP, patch_ids, decoder_ids, overflow_B)
