"""First-start measurements: P_max sized from patches per row (a quantile), counted the way the
device patcher counts (its overflow is the oracle), and the brute-force smallest buffer."""

import jax.numpy as jnp
import numpy as np
import pytest

from blt_jax.text import patching
from blt_jax.training import calibration


@pytest.mark.parametrize("overflow", [0.0, 0.01, 0.1, 0.5])
def test_buffer_is_the_smallest_that_at_most_the_allowed_rows_exceed(overflow):
    rng = np.random.default_rng(0)
    for r in (1, 7, 64, 300):
        counts = rng.integers(2, 90, r)
        got = calibration.size_patch_buffer(counts, overflow)
        brute = next(p for p in range(2, 200) if (counts > p).mean() <= overflow)
        assert got["p_max"] == brute
        assert got["overflow_rows"] == pytest.approx((counts > brute).mean())
        assert got["padding"] == pytest.approx(1 - np.minimum(counts, brute).mean() / brute)


RULES = {
    "space": patching.PatchRule(mode="space"),
    "static": patching.PatchRule(mode="static", patch_size=3),
    "global": patching.PatchRule(mode="global", threshold=1.0),
    "monotonic_capped": patching.PatchRule(mode="monotonic", threshold=0.2, max_patch_length=5),
    "byte": patching.PatchRule(mode="byte"),
}


@pytest.mark.parametrize("name", sorted(RULES))
def test_patches_per_row_is_what_the_device_buffer_needs(name):
    rule = RULES[name]
    rng = np.random.default_rng(1)
    ids = rng.choice(np.array([32, 97, 98, 10, 46, 120], np.int32), (6, 40))
    ids[:, 0] = 1  # BOS
    h = rng.gamma(1.5, 1.0, ids.shape).astype(np.float32)
    counts = calibration.patches_per_row(rule, ids, h if rule.needs_entropies else None)
    for p, want in ((counts, 0), (counts - 1, 1)):  # exactly enough slots, then one too few
        for row in range(len(ids)):
            buf = patching.patch_buffer(p_max=int(p[row]), ids=jnp.asarray(ids[row:row + 1]),
                                        entropies=jnp.asarray(h[row:row + 1]), rule=rule)
            assert int(buf.overflow[0]) == want, (name, row, int(p[row]))
