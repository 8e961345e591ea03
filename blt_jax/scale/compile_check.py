"""`blt-jax compile-check`: compile the real train step for a TPU slice on this (CPU) machine.

libtpu's topology descriptions (`pip install 'blt-jax[tpu]'`) let XLA compile for a named TPU
topology without TPU hardware. The step is lowered with abstract, sharded inputs (nothing is
materialised), compiled for the slice's devices, and its per-device memory (arguments, outputs,
temporaries) is compared with the chip's HBM. Exit status 3 means it does not fit.
"""

from __future__ import annotations

import math
import re
from typing import Any

import jax
import ml_collections
from jax.sharding import NamedSharding, PartitionSpec as P

from blt_jax import config
from blt_jax.errors import UserError
from blt_jax.model import factory, kinds
from blt_jax.scale import sharding

GIB = 2 ** 30
# HBM per chip and TensorCores per chip by device kind.
CHIPS = {"TPU v4": (32, 2), "TPU v5 lite": (16, 1), "TPU v5": (95, 2), "TPU v6 lite": (32, 1),
         "TPU v5p": (95, 2)}
_TYPES = {"v4": ("v4", 2, 3), "v5p": ("v5p", 2, 3), "v5e": ("v5e", 1, 2),
          "v5litepod": ("v5e", 1, 2), "v6e": ("v6e", 1, 2)}


def topology_name(spec: str) -> str:
    """'v5p:4x4x4' passes through; accelerator types like 'v5p-64' / 'v5litepod-16' map to one."""
    if ":" in spec:
        return spec
    m = re.fullmatch(r"(v4|v5p|v5e|v5litepod|v6e)-(\d+)", spec)
    if not m:
        raise UserError(f"topology: {spec!r} is neither NAME:AxBxC (e.g. v5p:4x4x4) nor an "
                        "accelerator type (e.g. v5p-64, v5litepod-16, v6e-64)")
    gen, cores_per_chip, dims = _TYPES[m.group(1)]
    chips = int(m.group(2)) // cores_per_chip
    if chips < 1 or chips & (chips - 1):
        raise UserError(f"topology: {spec} does not give a power-of-two chip count")
    shape = [1] * dims
    i = 0
    while math.prod(shape) < chips:  # grow the smallest dimension first: 2x2x2, 2x2x4, ...
        shape[i % dims] *= 2
        i += 1
    # Cloud TPU spelling: growing dimensions ascending, trailing 1s (v4:2x2x1, v5p:2x2x4)
    dims_out = sorted(d for d in shape if d > 1) + [d for d in shape if d == 1]
    return f"{gen}:{'x'.join(map(str, dims_out))}"


def _devices(name: str) -> list[Any]:
    try:
        from jax.experimental import topologies

        return list(topologies.get_topology_desc(platform="tpu", topology_name=name).devices)
    except Exception as e:  # libtpu missing, busy, or an unknown name
        if "lockfile" in str(e):
            raise UserError("topology: libtpu is in use by another JAX process on this machine "
                            "(any JAX run loads it once the TPU extra is installed); wait for it, "
                            "or set ALLOW_MULTIPLE_LIBTPU_LOAD=1") from None
        raise UserError(f"topology: cannot describe {name!r} ({str(e).splitlines()[0][:200]}); "
                        "install the TPU extra: pip install 'blt-jax[tpu]'") from None


def hbm_per_device(device: Any) -> float:
    kind = device.device_kind
    chip_gib, cores = CHIPS.get(kind, (None, 1))
    if chip_gib is None:
        raise UserError(f"topology: unknown HBM size for device kind {kind!r}")
    return chip_gib * GIB * getattr(device, "num_cores", 1) / cores


def _abstract(tree: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree,
                        shardings)


def _entropy_config(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The entropy model the config points at when readable here, else the reference 100M."""
    try:
        return factory.read_config(cfg.entropy.workdir).model if cfg.entropy.workdir else \
            config.model_preset("entropy_100m")
    except ValueError:
        return config.model_preset("entropy_100m")


def check(cfg: ml_collections.ConfigDict, topology: str,
          entropy_cfg: ml_collections.ConfigDict | None = None, *,
          devices: list[Any] | None = None, hbm_gib: float | None = None) -> dict[str, Any]:
    """Compiles cfg's train step for `topology`; returns the per-device memory report.

    `devices`/`hbm_gib` replace the libtpu topology (tests compile for fake CPU devices).
    """
    from blt_jax.training.train import Trainer

    name = topology_name(topology) if devices is None else topology
    devices = devices if devices is not None else _devices(name)
    try:
        mesh = sharding.make_mesh(tuple(cfg.mesh.shape), devices=devices,
                                  dcn_shape=tuple(cfg.mesh.dcn_shape))
    except ValueError as e:
        raise UserError(f"{e} (for {name})") from None
    kind = kinds.of(cfg)
    frozen = None
    if kind.takes_patcher:
        ecfg = entropy_cfg or _entropy_config(cfg)
        gdef, eabs = factory.abstract_model(ecfg)
        frozen = factory.Weights(gdef, _abstract(eabs, sharding.state_shardings(eabs, mesh)), ecfg)
    trainer = Trainer(cfg, mesh, frozen)
    state = _abstract(trainer.abstract, trainer.shardings)
    b, n = cfg.data.batch_size, cfg.data.seq_len
    rows_over = mesh.shape["data"] * mesh.shape["fsdp"]
    if (b // cfg.train.grad_accum) % rows_over:
        raise UserError(f"data.batch_size: {b} rows ({b // cfg.train.grad_accum} per "
                        f"micro-batch) do not split over the {rows_over} (data x fsdp) devices "
                        f"of {name}; use a multiple of {rows_over} or a smaller slice")
    bs = NamedSharding(mesh, P(("data", "fsdp")))
    batch = {k: jax.ShapeDtypeStruct(shape, dtype, sharding=bs)
             for k, (shape, dtype) in kind.batch_spec(cfg).items()}
    params = sum(math.prod(x.shape) for x in jax.tree.leaves(trainer.abstract["params"]))
    hbm = hbm_gib * GIB if hbm_gib is not None else hbm_per_device(devices[0])
    head = {"topology": name, "devices": len(devices), "device_kind": devices[0].device_kind,
            "mesh": dict(mesh.shape), "batch": [b, n], "params": params, "hbm_gib": hbm / GIB}
    with jax.set_mesh(mesh):
        lowered = trainer.train_step.lower(state, batch, trainer.frozen)
        try:
            compiled = lowered.compile()
        except Exception as e:  # XLA refuses programs that cannot fit in HBM
            m = re.search(r"temporaries \(([\d.]+)G\) exceeds available HBM \(([\d.]+)G\)",
                          str(e))
            if "RESOURCE_EXHAUSTED" not in str(e) or m is None:
                raise
            return head | {"fits": False, "temp_gib": float(m.group(1)) * 1e9 / GIB,
                           "total_gib": float("nan"), "headroom_gib": float("nan"),
                           "error": str(e).splitlines()[0][:300]}
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else (cost or {})
    used = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
            + mem.temp_size_in_bytes)
    return head | {
        "argument_gib": mem.argument_size_in_bytes / GIB,
        "output_gib": mem.output_size_in_bytes / GIB,
        "alias_gib": mem.alias_size_in_bytes / GIB, "temp_gib": mem.temp_size_in_bytes / GIB,
        "total_gib": used / GIB, "headroom_gib": (hbm - used) / GIB,
        "fits": used <= hbm, "flops_per_device": float(cost.get("flops", float("nan"))),
        "optimal_seconds": float(cost.get("optimal_seconds", float("nan"))),
    }


def smallest_accumulation(cfg: ml_collections.ConfigDict, topology: str,
                          entropy_cfg: ml_collections.ConfigDict | None = None, *,
                          headroom: float = 0.15, devices: list[Any] | None = None,
                          hbm_gib: float | None = None) -> dict[str, Any]:
    """The report of the smallest `train.grad_accum` (1, 2, 4, ...: micro-batches that still
    split over the data x fsdp devices) whose step leaves `headroom` of HBM free; the last
    one tried when none does. `tried` lists (accumulation, GiB per device) in order."""
    b, tried = cfg.data.batch_size, []
    accum = 1
    while True:
        report = check(config.replaced(cfg, {"train.grad_accum": accum}), topology, entropy_cfg,
                       devices=devices, hbm_gib=hbm_gib) | {"grad_accum": accum}
        used = report["total_gib"] if report["total_gib"] == report["total_gib"] \
            else report["temp_gib"]
        tried.append((accum, round(used, 2)))
        report["tried"] = tried
        report["fits"] = bool(report["fits"] and used <= (1.0 - headroom) * report["hbm_gib"])
        rows_over = report["mesh"]["data"] * report["mesh"]["fsdp"]
        if report["fits"] or b % (2 * accum) or (b // (2 * accum)) % rows_over:
            return report
        accum *= 2


def format_report(r: dict[str, Any]) -> str:
    if "error" in r:
        return (f"{r['topology']}: {r['devices']} x {r['device_kind']}, mesh {r['mesh']}, batch "
                f"{r['batch'][0]} x {r['batch'][1]}, {r['params'] / 1e9:.2f}B parameters\n"
                f"DOES NOT FIT: XLA needs {r['temp_gib']:.1f} GiB of temporaries per device, the "
                f"chip has {r['hbm_gib']:.1f} GiB; shrink data.batch_size, enable model.remat, "
                "use a bigger slice or shard more (mesh.shape)")
    accum = (f", {r['grad_accum']} micro-batches (tried {r['tried']})"
             if "grad_accum" in r else "")
    lines = [f"{r['topology']}: {r['devices']} x {r['device_kind']}, mesh {r['mesh']}, batch "
             f"{r['batch'][0]} x {r['batch'][1]}{accum}, {r['params'] / 1e9:.2f}B parameters",
             f"per device: arguments {r['argument_gib']:.2f} GiB + outputs {r['output_gib']:.2f} "
             f"GiB - aliased {r['alias_gib']:.2f} GiB + temporaries {r['temp_gib']:.2f} GiB = "
             f"{r['total_gib']:.2f} GiB of {r['hbm_gib']:.1f} GiB HBM "
             f"(headroom {r['headroom_gib']:.2f} GiB)",
             f"XLA: {r['flops_per_device']:.3g} FLOPs per device per step, roofline estimate "
             f"{r['optimal_seconds']:.3g} s" if r['optimal_seconds'] == r['optimal_seconds']
             and r['optimal_seconds'] > 0 else
             f"XLA: {r['flops_per_device']:.3g} FLOPs per device per step (no roofline estimate)",
             "FITS" if r["fits"] else "DOES NOT FIT: shrink data.batch_size, enable model.remat, "
             "use a bigger slice or shard more (mesh.shape)"]
    return "\n".join(lines)
