"""blt-jax: the Byte Latent Transformer in JAX/Flax."""

__version__ = "0.1.0"
