"""Prompt batches in chunks that fit the device, so a big request is slower, not a crash.

A decode call holds, per padded prompt row: the mask decoder's activations, the low-res logits of
every mask token, and the upsampling to the original image size; the host then holds every
prompt's masks. `chunk_rows` sizes the rows of one call from these (`decoder_bytes` plus the
caller's upsampling bytes) and the device's free memory, and checks that the outputs of all the
prompts fit on the host. Chunks are prompt buckets (`utils.batching`), so every full chunk reuses
one compiled program and the last one a bucket's.

The decoder's share was measured with XLA's memory analysis (CPU) on SAM's 1024-px decoder
(64x64 embedding, 256 channels): 16.9 MiB of temporaries and outputs per prompt, 4.2 times the
image embedding, and 32.8 MiB (8.2 times) with Stable-SAM's plugins; `decoder_bytes` counts 5 and
10 times it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .batching import bucket

# Part of the device's free memory one call may plan for: the estimate is not exact, XLA's
# allocator fragments, and the outputs of the previous chunk may still be alive.
DEVICE_FRACTION = 0.5
# The budget of a device that reports no memory statistics (the CPU backend reports none).
DEFAULT_DEVICE_BUDGET = 2 << 30
# Part of the host's available memory the outputs of one call may take.
HOST_FRACTION = 0.8
MIB = 2**20


def decoder_bytes(
    embedding_size: int, embedding_dim: int, *, plugins: bool = False, num_mask_tokens: int = 4
) -> int:
    """Device bytes per prompt of one mask-decoder call, float32: activations (5 times the
    g x g x C image embedding, 10 times with the plugins) plus the low-res logits of every mask
    token [num_mask_tokens, 4g, 4g]."""
    g = embedding_size
    copies = 10 if plugins else 5
    return 4 * (copies * g * g * embedding_dim + num_mask_tokens * (4 * g) ** 2)


def host_bytes(masks: int, original_size, low_res_size: int, *, logits: bool) -> int:
    """Host bytes per prompt of a decode call's outputs: `masks` masks at the original size (bool,
    or float32 logits), their low-res logits and predicted IoUs."""
    h, w = original_size
    return masks * (h * w * (4 if logits else 1) + 4 * low_res_size**2 + 4)


def device_budget(device) -> int:
    """Bytes one call may use on `device`: a part of its free memory where `memory_stats()`
    reports it, else `DEFAULT_DEVICE_BUDGET`."""
    try:
        stats = device.memory_stats() if device is not None else None
    except Exception:  # noqa: BLE001 - backends without statistics raise or return None
        stats = None
    if not stats or "bytes_limit" not in stats:
        return DEFAULT_DEVICE_BUDGET
    free = int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    return max(0, int(free * DEVICE_FRACTION))


def host_available() -> int | None:
    """Available host memory in bytes (Linux /proc/meminfo), or None where it is not known."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_host(count: int, host_bytes_per_prompt: int, what: str) -> None:
    """Raises MemoryError, before anything runs, when the outputs of `count` prompts do not fit
    in the host's available memory; the message says how many prompts do."""
    available = host_available()
    need = count * host_bytes_per_prompt
    if available is None or need <= HOST_FRACTION * available:
        return
    fits = int(HOST_FRACTION * available // max(1, host_bytes_per_prompt))
    raise MemoryError(
        f"{count} prompts need {need / 2**30:.1f} GiB of host memory for their outputs ({what}: "
        f"{host_bytes_per_prompt / MIB:.1f} MiB per prompt), but only {available / 2**30:.1f} "
        f"GiB are available: {fits} prompts fit in one call. Pass at most {fits} prompts per "
        "call (or ask for smaller outputs: multimask_output=False, return_logits=False)."
    )


def chunk_rows(
    count: int,
    device_bytes_per_prompt: int,
    buckets: Sequence[int],
    device,
    *,
    multiple: int = 1,
) -> int:
    """Prompt rows per call: `count` itself (one call, padded to its bucket as before) when that
    fits the device, else the largest bucket (or multiple of the largest) that fits, at least the
    smallest bucket. `multiple`: devices the rows are split over (the budget is per device)."""
    per_device = max(1, device_bytes_per_prompt)
    fit = max(1, device_budget(device) // per_device) * multiple
    if bucket(count, buckets) <= fit:
        return max(count, 1)
    largest = buckets[-1]
    if fit >= largest:
        return fit // largest * largest
    return max([b for b in buckets if b <= fit] or [buckets[0]])


def plan_decode(
    count: int,
    *,
    grid: int,
    channels: int,
    plugins: bool,
    masks: int,
    original_size,
    upsample_bytes: int,
    logits: bool,
    buckets: Sequence[int],
    device,
    extra_bytes: int = 0,
    multiple: int = 1,
) -> int:
    """`chunk_rows` of a SAM decode call (`decoder_bytes` + the caller's `upsample_bytes` +
    `extra_bytes` per prompt on the device), after `check_host` of its outputs (`host_bytes` +
    `extra_bytes`)."""
    device_bytes = decoder_bytes(grid, channels, plugins=plugins) + upsample_bytes + extra_bytes
    host = host_bytes(masks, original_size, 4 * grid, logits=logits) + extra_bytes
    h, w = original_size
    check_host(count, host, f"{masks} masks of {h}x{w}" + (" as logits" if logits else ""))
    return chunk_rows(count, device_bytes, buckets, device, multiple=multiple)


def plan_exported_decode(
    manifest: dict, count: int, original_size, multiple: int, multimask: bool, logits: bool, buckets
) -> int:
    """`plan_decode` of `serving.runtime.ExportedSam.decode`, sized from its export manifest. Its
    upsampling holds the half-resized rows and the logits, padded to `multiple` pixels."""
    low, masks = int(manifest["low_res_size"]), 3 if multimask else 1
    hb, wb = (-(-v // multiple) * multiple for v in original_size)
    return plan_decode(
        count,
        grid=int(manifest["embedding_size"]),
        channels=int(manifest["embedding_dim"]),
        plugins=bool(manifest.get("stable_sam")),
        masks=masks,
        original_size=original_size,
        upsample_bytes=4 * masks * (low * wb + 2 * hb * wb),
        logits=logits,
        buckets=buckets,
        device=_first_device(),
    )


def _first_device():
    import jax  # lazy: the rest of this module is numpy only

    return jax.local_devices()[0]


def run_in_chunks(
    fn: Callable, count: int, chunk: int, inputs: Sequence[np.ndarray | None], **options
):
    """`fn(*inputs, **options)` over rows [i, i + chunk) of every input (None stays None), its
    outputs (numpy arrays, or tuples / lists / dicts of them, each with a leading prompt axis)
    written into arrays allocated once for all `count` rows."""
    out = None
    for start in range(0, count, chunk):
        part = [None if x is None else x[start : start + chunk] for x in inputs]
        result = fn(*part, **options)
        if out is None:
            out = _allocate(result, count)
        _fill(out, result, start)
    return out


def _allocate(result, count: int):
    if isinstance(result, dict):
        return {k: _allocate(v, count) for k, v in result.items()}
    if isinstance(result, (tuple, list)):
        return type(result)(_allocate(v, count) for v in result)
    result = np.asarray(result)
    return np.empty((count, *result.shape[1:]), result.dtype)


def _fill(out, result, start: int) -> None:
    if isinstance(result, dict):
        for k, v in result.items():
            _fill(out[k], v, start)
    elif isinstance(result, (tuple, list)):
        for o, v in zip(out, result):
            _fill(o, v, start)
    else:
        out[start : start + len(result)] = result
