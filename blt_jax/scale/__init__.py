"""Scale-out: the one logical-axis -> mesh rules table, jax.distributed start-up and the AOT
compile check for TPU slices.
"""
