"""The rules table's fitting: indivisible dimensions replicate, and a fallback takes their axes."""

import jax
from jax.sharding import PartitionSpec as P

from blt_jax.scale import sharding


def test_hash_table_shards_columns_else_rows_never_whole():
    mesh = sharding.make_mesh((1, 8, 1))
    names = ("hash_vocab", "hash_embed")
    assert sharding.fitted_spec(names, (8192, 16), mesh) == P(None, "fsdp")  # columns divide
    # 8B's case in miniature (1280 columns on 512 chips): rows take fsdp instead
    assert sharding.fitted_spec(names, (8192, 12), mesh) == P("fsdp", None)
    assert sharding.fitted_spec(names, (8190, 12), mesh) == P(None, None)  # neither divides
    # a fallback never steals axes from a dimension that kept them
    assert sharding.fitted_spec(("embed", "mlp"), (12, 64), mesh) == P(None, "tensor")
    # unnamed dimensions are never a fallback's heir
    acts = ("batch", "length", "act_heads", None)
    assert sharding.fitted_spec(acts, (8, 16, 4, 64), mesh) == P(("data", "fsdp"), None, "tensor", None)
    assert jax.device_count() == 8
