"""The small-scale paper table on the embedded corpus: BLT with entropy, space and static
patching vs the BPE baseline at equal training FLOPs (paper Tables 1/3 and Figure 1 in miniature).

    blt-jax compare --config experiments/compare_tiny.py --workdir runs/compare_tiny
    blt-jax compare --config experiments/compare_tiny.py:ci --workdir runs/compare_ci   # reduced

The full version takes about 17 minutes on 2 CPU cores; `:ci` is the reduced run CI executes.
"""

import ml_collections


def get_config(arg=None):
    c = ml_collections.ConfigDict(dict(
        train_flops=3.0e12,  # per model (paper formulas, model FLOPs)
        entropy_steps=400,
        target_bytes_per_patch=4.0,  # entropy patching, calibrated on training rows
        static_patch_size=4,
        curve_points=4, curve_eval_batches=8,
        eval_docs=0,  # validation documents in the final table (0: all)
        context_bytes=0,  # every model's left context in the table (0: the most all trained at)
        noise_docs=6, noise_rate=0.1, seed=0, progress=True))
    if arg == "ci":
        c.update(train_flops=5.0e10, entropy_steps=20, curve_points=2, curve_eval_batches=1,
                 eval_docs=3, noise_docs=1, progress=False)
    elif arg not in (None, ""):
        raise ValueError(f"compare_tiny: unknown variant {arg!r} (use ':ci' or nothing)")
    return c
