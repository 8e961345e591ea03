"""Multi-process start-up: `jax.distributed` from flags, environment or Cloud TPU detection.

Order of precedence: explicit arguments (the CLI's --coordinator/--num-processes/--process-id),
then BLT_JAX_COORDINATOR / BLT_JAX_NUM_PROCESSES / BLT_JAX_PROCESS_ID, then a Cloud TPU VM of
a multi-host slice (see :func:`on_multihost_tpu`), where JAX discovers everything itself.
A single process needs none of it. On CPU the collectives run over gloo (loopback tests).
"""

from __future__ import annotations

import glob
import os

import jax

from blt_jax.errors import UserError


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else None


def on_multihost_tpu() -> bool:
    """A Cloud TPU VM of a multi-host slice: TPU_WORKER_HOSTNAMES lists several hosts, or the
    VM has TPU chips and the variable is absent (it may live only in the VM's metadata, which
    JAX's own cluster detection reads; on a single host that initialises one process)."""
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES")
    if hosts is None:
        return _has_tpu_chips()
    return len([h for h in hosts.split(",") if h]) > 1


def _has_tpu_chips() -> bool:
    # TPU VMs expose their chips as /dev/accel* (v4, v5p) or VFIO groups (v5e, v6e).
    return bool(glob.glob("/dev/accel[0-9]*") or glob.glob("/dev/vfio/[0-9]*"))


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, heartbeat_timeout_s: int = 30,
               init_timeout_s: int = 120) -> bool:
    """Starts jax.distributed when configured; returns whether it did. Call before using JAX.

    A short heartbeat timeout makes the survivors of a crashed process fail with an error
    instead of waiting forever in a collective.
    """
    coordinator = coordinator or os.environ.get("BLT_JAX_COORDINATOR")
    num_processes = num_processes if num_processes is not None else _env_int(
        "BLT_JAX_NUM_PROCESSES")
    process_id = process_id if process_id is not None else _env_int("BLT_JAX_PROCESS_ID")
    if coordinator:
        if num_processes is None or process_id is None:
            raise UserError("distributed: --coordinator needs --num-processes and --process-id")
        if not 0 <= process_id < num_processes:
            raise UserError(f"distributed: process id {process_id} not in [0, {num_processes})")
        if os.environ.get("JAX_PLATFORMS", "").startswith("cpu") or not _has_accelerator():
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator, num_processes=num_processes,
                                   process_id=process_id, coordinator_bind_address=coordinator,
                                   initialization_timeout=init_timeout_s,
                                   heartbeat_timeout_seconds=heartbeat_timeout_s)
        return True
    if on_multihost_tpu():
        jax.distributed.initialize(heartbeat_timeout_seconds=max(heartbeat_timeout_s, 100))
        return True
    return False


def _has_accelerator() -> bool:
    # Decided from the environment only: querying devices would start the backend too early.
    return bool(os.environ.get("TPU_ACCELERATOR_TYPE") or os.environ.get("CUDA_VISIBLE_DEVICES"))


def barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def rendezvous(name: str, timeout_s: int = 1800) -> None:
    """Waits for every process at the coordination service (no device collective involved)."""
    if jax.process_count() > 1:
        from jax._src import distributed as _dist

        _dist.global_state.client.wait_at_barrier(name, timeout_s * 1000)
