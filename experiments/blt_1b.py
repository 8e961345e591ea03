"""BLT 1B, the released blt-1b shape (paper Table 10; HF defaults).

    blt-jax train --config experiments/blt_1b.py --workdir /gcs/BUCKET/runs/blt_1b \\
        --config.entropy.workdir=/gcs/BUCKET/runs/entropy_100m

Paper optimizer settings (§4.8): AdamW β 0.9/0.95, ε 1e-8, weight decay 0.1, lr 4e-4, 2000
warm-up steps, cosine decay to 0, clipping 1.0. Batches of 16M bytes (1024 rows of
16384 bytes); bf16 compute with fp32 parameters; layers rematerialised.
Data: a TFDS dataset prepared on the TPU VM (README, "Data on a TPU VM").
"""

from blt_jax import config


def get_config():
    c = config.experiment_config("blt", config.model_preset("blt_1b"))
    c.model.update(dtype="bfloat16", remat=True)
    c.data.update(source="tfds", tfds_name="c4/en:3.1.0", tfds_eval_split="validation")
    c.data.update(seq_len=16384, batch_size=1024, p_max=5120, eval_batch_size=64)
    c.optim.update(lr=4e-4, warmup_steps=2000, schedule="cosine", min_lr_ratio=0.0, clip=1.0)
    c.train.update(steps=100_000, eval_every=2000, eval_batches=50, log_every=50)
    c.checkpoint.update(every=1000, keep_latest=3, keep_every=10_000, keep_best=1)
    c.entropy.target_bytes_per_patch = 4.5  # threshold calibrated on training rows
    c.entropy.workdir = ""  # required: --config.entropy.workdir=/gcs/BUCKET/runs/entropy_100m
    return c
