"""Files in and out: decoding an image, and writing a file so no reader sees it half-written."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import IO

import numpy as np
from PIL import Image


class ImageReadError(OSError):
    """An image file that is missing or cannot be decoded; the message names the file."""


def load_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as uint8 HxWx3 RGB (grayscale, palette and RGBA are converted).

    The file is decoded completely here: PIL decodes lazily, so a truncated JPEG would otherwise
    fail later, far from its name."""
    try:
        with Image.open(path) as image:
            image.load()
            return np.asarray(image if image.mode == "RGB" else image.convert("RGB"), np.uint8)
    except FileNotFoundError as error:
        raise ImageReadError(
            f"cannot read image {os.fspath(path)}: the file does not exist"
        ) from error
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ImageReadError(
            f"cannot read image {os.fspath(path)}: it is not a readable image ({error}); "
            "re-export it as PNG/JPEG"
        ) from error


def atomic_write(path: str | os.PathLike, data: bytes | str | Callable[[IO[bytes]], object]) -> str:
    """Writes `data` (bytes, text, or a function writing into a binary file object, such as
    `lambda f: np.savez(f, **arrays)`) to `path` under a temporary name next to it, then renames
    it over `path`: a reader, or a crash, never sees a half-written file. Returns the path."""
    path = os.fspath(path)
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path
