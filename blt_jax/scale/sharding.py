"""The one place that maps logical axis names onto the (data, fsdp, tensor) mesh.

Parameters carry their logical names as `logical_axes` metadata (see layers.param); activations
are constrained with :func:`constrain`. Both read RULES, so changing a strategy is a one-line edit.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

RULES: tuple[tuple[str, Any], ...] = (
    # parameters
    ("embed", "fsdp"),  # model width of weight matrices (FSDP shards it)
    ("mlp", "tensor"),  # FFN hidden / projection outputs
    ("heads", "tensor"),  # query heads x head_dim
    ("kv_heads", "tensor"),  # key/value heads x head_dim
    ("vocab", None),  # 260 byte ids (too small to split)
    # The fused hash n-gram tables (3B rows x d_E at 1B) shard by columns: with rows on fsdp,
    # batch-sharded ids made XLA all-gather the whole table in the forward and build a full-size
    # gradient (scatter-add + all-reduce) in the backward, temporaries that did not shrink with
    # more chips. Columns keep every gather and its scatter-add local to a shard.
    ("hash_vocab", None),
    ("hash_embed", "fsdp"),
    ("norm", None),
    # activations
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("patches", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", None),
)
_RULES = dict(RULES)

# Where a rule's mesh axes do not divide a dimension (8B: 1280 hash columns on 512 chips), the
# dimension is replicated; a fallback names another dimension that then takes those axes, so a
# 46 GiB table never ends up whole on every chip. Rows on fsdp make XLA gather the table for a
# batch-sharded lookup, which costs temporaries, not a replicated table and optimizer state.
FALLBACKS: dict[str, str] = {"hash_embed": "hash_vocab"}


def logical_spec(names: Sequence[str | None]) -> P:
    """PartitionSpec for logical names; KeyError on a name missing from RULES."""
    return P(*(None if n is None else _RULES[n] for n in names))


def axis_names(axes: Any) -> tuple[str, ...]:
    """One PartitionSpec entry (None, a name, or a tuple of names) as a tuple of names."""
    return () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)


def axis_size(mesh: jax.sharding.Mesh, axes: Any) -> int:
    """Devices along one PartitionSpec entry."""
    size = 1
    for a in axis_names(axes):
        size *= mesh.shape[a]
    return size


def fitted_spec(names: Sequence[str | None], shape: Sequence[int], mesh: jax.sharding.Mesh) -> P:
    """logical_spec, replicating any dimension the mesh axes do not divide evenly."""
    spec = logical_spec(names)
    out = [axes if dim % axis_size(mesh, axes) == 0 else None for axes, dim in zip(spec, shape)]
    for i, (name, axes) in enumerate(zip(names, spec)):
        heir = FALLBACKS.get(name) if axes is not None and out[i] is None else None
        if heir is not None and heir in names:
            j = list(names).index(heir)
            if out[j] is None and shape[j] % axis_size(mesh, axes) == 0:
                out[j] = axes
    return P(*out)


def np_prod(xs: Sequence[int]) -> int:
    out = 1
    for x in xs:
        out *= x
    return out


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """with_sharding_constraint by logical names; a no-op when no mesh is active."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, fitted_spec(names, x.shape, mesh))


def state_shardings(state: Any, mesh: jax.sharding.Mesh) -> Any:
    """NamedSharding for every leaf of an nnx State (abstract or concrete)."""

    def one(v: Any) -> Any:
        if isinstance(v, nnx.Variable):
            names = v.get_metadata().get("logical_axes")
            value = v.get_value()
            spec = fitted_spec(names, value.shape, mesh) if names else P()
            return v.replace(NamedSharding(mesh, spec))
        return NamedSharding(mesh, P())

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def make_mesh(shape: Sequence[int] = (1, -1, 1), devices: Sequence[Any] | None = None,
              dcn_shape: Sequence[int] = (1, 1, 1)) -> jax.sharding.Mesh:
    """A (data, fsdp, tensor) mesh with Auto axes; one size may be -1 to take the rest.

    With `dcn_shape` (multi-slice), `shape` is per slice and the mesh is the hybrid
    ICI x DCN mesh (put data parallelism on DCN: dcn_shape=(slices, 1, 1)).
    """
    devices = list(devices if devices is not None else jax.devices())
    dcn = tuple(int(x) for x in dcn_shape)
    if len(dcn) != 3 or min(dcn) < 1:
        raise ValueError(f"mesh.dcn_shape: expected 3 sizes >= 1, got {dcn}")
    if dcn != (1, 1, 1):
        from jax.experimental import mesh_utils

        per_slice = list(shape)
        if -1 in per_slice:
            known = np_prod([x for x in per_slice if x != -1])
            per_slice[per_slice.index(-1)] = len(devices) // np_prod(dcn) // known
        if np_prod(per_slice) * np_prod(dcn) != len(devices):
            raise ValueError(f"mesh: {per_slice} per slice x {dcn} slices != {len(devices)} "
                             "devices")
        grid = mesh_utils.create_hybrid_device_mesh(tuple(per_slice), dcn, devices)
        return jax.sharding.Mesh(grid, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3)
    sizes = list(shape)
    if len(sizes) != 3:
        raise ValueError(f"mesh: expected 3 sizes for {MESH_AXES}, got {sizes}")
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh: at most one size may be -1, got {sizes}")
    known = 1
    for s in sizes:
        if s != -1:
            if s < 1:
                raise ValueError(f"mesh: sizes must be >= 1 or -1, got {sizes}")
            known *= s
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"mesh: {len(devices)} devices cannot fill {sizes}")
        sizes[sizes.index(-1)] = len(devices) // known
    total = sizes[0] * sizes[1] * sizes[2]
    if total < len(devices) and -1 not in shape and jax.process_count() == 1:
        devices = devices[:total]  # an explicit smaller mesh on one host uses the first devices
    if total != len(devices):
        raise ValueError(f"mesh: {sizes} needs {total} devices, {len(devices)} available")
    auto = (jax.sharding.AxisType.Auto,) * 3
    try:
        return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=auto, devices=devices)
    except NotImplementedError as e:  # a TPU torus cannot host this shape
        raise ValueError(f"mesh: {sizes} does not map onto these chips' physical axes "
                         f"({str(e).split('.')[0][:120]}); use sizes that are products of the "
                         "slice's axes, e.g. (8, 64, 1) on 8x8x8") from None
