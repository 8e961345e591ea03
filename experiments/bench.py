"""The bench shape (dims 256/512/256, 1/8/4 layers, 2048-byte rows) used by benchmarks/.

    blt-jax train --config experiments/bench.py --workdir runs/bench

Space patching keeps it self-contained (no entropy model needed); pass
--config.model.patching.mode=global --config.entropy.workdir=DIR for entropy patching.
"""

from blt_jax import config


def get_config():
    c = config.experiment_config("blt", config.model_preset("blt_bench"))
    c.model.patching.mode = "space"
    c.data.update(seq_len=2048, batch_size=8, p_max=640, eval_batch_size=8)
    c.optim.update(lr=1e-3, warmup_steps=50)
    c.train.update(steps=200, eval_every=100, eval_batches=4, log_every=10)
    c.checkpoint.every = 100
    return c
