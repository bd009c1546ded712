"""Multi-process setup and the few collective helpers the trainer needs.

One mesh axis "data" spans every device of every process: the batch is split along it and all
weights are replicated. Process 0 alone writes shared files (metrics, config, export renames); the
sync points keep the other processes from running ahead of it.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, NamedSharding


def initialize_distributed(
    config: ml_collections.ConfigDict | None = None, *, auto_detect: bool = False
) -> None:
    """`jax.distributed.initialize` for multi-process jobs; a no-op for a single process.

    Explicit `config.distributed` values win. With `auto_detect` (the command line), JAX's cluster
    detection (SLURM, Open MPI, Kubernetes, TPU pods) is tried and a plain single host (no
    coordinator found) carries on alone. Must run before any other JAX computation."""
    if jax.distributed.is_initialized():
        return
    dist = None if config is None else config.distributed
    if dist is not None and dist.coordinator_address:
        jax.distributed.initialize(
            coordinator_address=dist.coordinator_address,
            num_processes=dist.num_processes,
            process_id=dist.process_id,
        )
    elif auto_detect:
        try:
            jax.distributed.initialize()
        except ValueError:
            pass  # no coordinator: a single-process run


def make_mesh(devices=None) -> jax.sharding.Mesh:
    """A 1-D ("data",) mesh over `devices` (default: every device of every process).

    Auto axis types: the sharding is given at the jit boundary and XLA propagates it, which keeps
    the models' per-example gathers (DSP sampling) legal without `jax.shard_map`."""
    devices = list(jax.devices() if devices is None else devices)
    return jax.make_mesh((len(devices),), ("data",), axis_types=(AxisType.Auto,), devices=devices)


def replicate(tree, sharding: NamedSharding, *, copy: bool = True):
    """Places identical per-process values on every device of a (possibly multi-host) mesh.

    copy=False reuses arrays already placed that way; never for state the step donates, which
    would delete the caller's model arrays."""

    def put(x):
        if not copy and isinstance(x, jax.Array) and x.sharding.is_equivalent_to(sharding, x.ndim):
            return x
        if jax.process_count() == 1:
            return jax.device_put(jnp.array(x, copy=True), sharding)
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(put, tree)


def local_copy(x):
    """A replicated global array's local replica, readable on any process."""
    return x.addressable_data(0) if isinstance(x, jax.Array) else x


def on_process_zero(predicate: Callable[[], bool]) -> bool:
    """Process 0's answer, on every process (hosts may not share a filesystem view)."""
    answer = bool(predicate())
    if jax.process_count() > 1:
        answer = bool(multihost_utils.broadcast_one_to_all(np.int32(answer)))
    return answer


def sync(name: str) -> None:
    """A barrier over all processes (a no-op for one)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)
