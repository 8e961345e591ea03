"""The reference entropy model: 768 wide, 14 layers, 12 heads, window 512, RoPE θ 10000.
Trained once, then frozen for every BLT (spec §2.4: 8192-byte rows).

    blt-jax train --config experiments/entropy_100m.py --workdir /gcs/BUCKET/runs/entropy_100m

Paper optimizer settings (§4.8): AdamW β 0.9/0.95, ε 1e-8, weight decay 0.1, lr 4e-4, 2000
warm-up steps, cosine decay to 0, clipping 1.0. Batches of 16M bytes (64 rows of
8192 bytes); bf16 compute with fp32 parameters; layers rematerialised.
Data: a TFDS dataset prepared on the TPU VM (README, "Data on a TPU VM").
"""

from blt_jax import config


def get_config():
    c = config.experiment_config("entropy", config.model_preset("entropy_100m"))
    c.model.update(dtype="bfloat16", remat=True)
    c.data.update(source="tfds", tfds_name="c4/en:3.1.0", tfds_eval_split="validation")
    c.data.update(seq_len=8192, batch_size=64, p_max=0, eval_batch_size=64)
    c.optim.update(lr=4e-4, warmup_steps=2000, schedule="cosine", min_lr_ratio=0.0, clip=1.0)
    c.train.update(steps=100_000, eval_every=2000, eval_batches=50, log_every=50)
    c.checkpoint.update(every=1000, keep_latest=3, keep_every=10_000, keep_best=1)
    return c
