"""Fixed-size prompt and image batches, so new counts rarely trigger a recompilation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Prompt counts are padded up to one of these (then to multiples of the largest).
DEFAULT_PROMPT_BUCKETS: tuple[int, ...] = (1, 4, 16, 64, 256)


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def bucket(n: int, buckets: Sequence[int] = DEFAULT_PROMPT_BUCKETS) -> int:
    """The smallest bucket >= n; past the largest, the next multiple of the largest."""
    for size in buckets:
        if n <= size:
            return size
    return round_up(n, buckets[-1])


def bucket_chunks(n: int, buckets: Sequence[int] = DEFAULT_PROMPT_BUCKETS) -> list[int]:
    """n as a sum of bucket sizes, largest first, for calls that pad no rows: 20 -> [16, 4]
    instead of one call padded to 64 (the smallest bucket is 1, else the rest is one more
    bucket-padded call)."""
    sizes = []
    for size in sorted(buckets, reverse=True):
        while n >= size:
            sizes.append(size)
            n -= size
    return sizes + ([n] if n else [])


def pad_rows(x: np.ndarray | None, rows: int, fill: float | None = None) -> np.ndarray | None:
    """Pads axis 0 to `rows`. `fill=None` repeats the last row: valid inputs whose outputs are
    sliced off, so padding can never produce NaNs or new shapes; a number pads with that value
    (validity flags pad with 0 = invalid)."""
    if x is None or x.shape[0] == rows:
        return x
    if fill is None:
        return np.concatenate([x, np.repeat(x[-1:], rows - x.shape[0], axis=0)], axis=0)
    out = np.full((rows, *x.shape[1:]), fill, x.dtype)
    out[: len(x)] = x
    return out
