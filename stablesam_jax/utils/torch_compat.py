"""Torch tensors and devices at the edges of the `segment_anything`-shaped API.

torch is optional: this module never imports it at the top, and `is_tensor` only looks at
`sys.modules`, so nothing imports torch until a caller passes a torch object in (then it is
already imported) or asks for a torch result (`to_torch`, `torch_device`). Tensors cross with
DLPack (zero-copy where both sides can see the memory: CPU to CPU, a CUDA tensor to a JAX GPU
array) and through numpy otherwise.
"""

from __future__ import annotations

import re
import sys
import warnings
from typing import Any

import jax
import numpy as np

_DEVICE_SPEC = re.compile(r"^(cpu|cuda|gpu|tpu)(?::(\d+))?$")


def is_tensor(x: Any) -> bool:
    """Whether `x` is a torch tensor, without importing torch."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def to_numpy(x: Any, dtype=None) -> np.ndarray:
    """numpy view of a CPU tensor (a copy from any other device); numpy / JAX / lists as is."""
    if is_tensor(x):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def to_jax(x: Any, device: jax.Device | None = None) -> jax.Array:
    """A JAX array of `x` on `device`; a torch tensor crosses through DLPack (zero-copy when JAX
    can address its memory, else through numpy)."""
    if is_tensor(x):
        tensor = x.detach().contiguous()
        try:
            array = jax.dlpack.from_dlpack(tensor)
        except Exception:  # noqa: BLE001 - a device JAX has no client for (e.g. CUDA on CPU JAX)
            array = jax.numpy.asarray(tensor.cpu().numpy())
    else:
        array = jax.numpy.asarray(x)
    return array if device is None else jax.device_put(array, device)


def to_torch(x: Any, device: Any = None):
    """A torch tensor of a JAX (or numpy) array: DLPack where torch can address the memory
    (zero-copy), else a host copy; then moved to `device` if given."""
    import torch  # optional dependency, imported only when a torch result is asked for

    if isinstance(x, jax.Array):
        x = jax.block_until_ready(x)  # the tensor must not alias a buffer still being written
        try:
            tensor = torch.from_dlpack(x)
        except Exception:  # noqa: BLE001 - e.g. a GPU array and a CPU-only torch
            tensor = torch.from_numpy(np.array(x))
    else:
        x = np.ascontiguousarray(x)
        try:  # DLPack also shares read-only arrays (numpy views of JAX buffers), unlike from_numpy
            tensor = torch.from_dlpack(x)
        except Exception:  # noqa: BLE001 - e.g. a dtype DLPack lacks
            tensor = torch.from_numpy(x.copy())
    return tensor if device is None else tensor.to(device)


def jax_device(spec: Any) -> jax.Device:
    """The JAX device for a torch-style device: "cpu", "cuda", "cuda:1", a `torch.device`, or a
    `jax.Device` (returned as is). "cuda" on a machine whose JAX has no GPU falls back to JAX's
    default device (the CPU, or the TPU on a TPU host) with one warning, so a script written for
    a GPU still runs."""
    if isinstance(spec, jax.Device):
        return spec
    if type(spec).__module__ == "torch" and type(spec).__name__ == "device":
        spec = str(spec)
    match = _DEVICE_SPEC.match(str(spec).strip().lower()) if isinstance(spec, str) else None
    if match is None:
        raise ValueError(
            f"unknown device {spec!r}: use 'cpu', 'cuda', 'cuda:N', 'tpu', a torch.device or a "
            "jax.Device"
        )
    kind, index = match.group(1), int(match.group(2) or 0)
    backend = {"cuda": "gpu"}.get(kind, kind)
    try:
        devices = jax.devices(backend)
    except RuntimeError:
        if backend == "cpu":
            raise
        fallback = jax.devices()[0]
        warnings.warn(
            f"device {spec!r} was asked for, but JAX has no {backend.upper()} here; using "
            f"{fallback} instead (install JAX with GPU support to use a GPU)",
            RuntimeWarning,
            stacklevel=3,
        )
        return fallback
    if index >= len(devices):
        raise ValueError(f"device {spec!r} does not exist: JAX sees {len(devices)} ({devices})")
    return devices[index]


def torch_device(device: jax.Device):
    """The torch device whose tensors share memory with arrays on the JAX `device`: that CUDA
    device when torch can use it, else the CPU."""
    import torch  # optional dependency, imported only when a torch device is asked for

    if device.platform == "gpu" and torch.cuda.is_available():
        return torch.device("cuda", getattr(device, "local_hardware_id", None) or 0)
    return torch.device("cpu")


def device_of(arrays) -> jax.Device:
    """The device holding the first array of a pytree (weights are placed together)."""
    leaves = [x for x in jax.tree_util.tree_leaves(arrays) if isinstance(x, jax.Array)]
    if not leaves:
        return jax.devices()[0]
    return sorted(leaves[0].devices(), key=lambda d: d.id)[0]


def user_device(device: jax.Device) -> Any:
    """What `.device` returns: a `torch.device` when the caller's program has imported torch
    (so `torch.tensor(..., device=sam.device)` works as in a PyTorch script), else the JAX
    device."""
    return torch_device(device) if "torch" in sys.modules else device
