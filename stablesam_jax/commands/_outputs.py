"""The checks a command runs on its outputs before the expensive work, so that a run never ends,
after minutes, at a path it cannot write, and never writes over its own inputs.

Paths are compared after resolving links (`os.path.realpath`), so `./a.png`, `a.png` and a link
to it are one file.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator

from PIL import Image

from ._errors import UsageError

# Suggested in messages; PIL writes many more (any registered extension with a save handler).
COMMON_IMAGE_EXTENSIONS = (".png", ".jpg", ".bmp", ".tif", ".webp")


def _real(path) -> str:
    return os.path.realpath(os.fspath(path))


def is_within(path, folder) -> bool:
    """True when `path` is `folder` or lies inside it."""
    path, folder = _real(path), _real(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def refuse_overwriting(output, inputs: Iterable, what: str, *, inside: bool = False) -> None:
    """UsageError when `output` is one of `inputs` (with `inside`: or lies within one, e.g. a
    checkpoint directory). Inputs that are None or empty are skipped."""
    for given in inputs:
        if not given:
            continue
        if _real(output) == _real(given) or (inside and is_within(output, given)):
            raise UsageError(
                f"{what} {output} would write over the input {given}; choose another path"
            )


def check_output_file(path, what: str) -> str:
    """`path` as a string, or UsageError unless a file can be created there: it is not a
    folder and its folder exists."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise UsageError(f"{what} {path} is a folder; give a file name")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"{what} {path}: the folder {folder} does not exist; create it first")
    return path


def check_output_dir(path, what: str) -> str:
    """`path` as a string, or UsageError when it exists and is not a folder."""
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"{what} {path} is a file, not a folder; give a folder path")
    return path


def image_format(path, what: str) -> str:
    """The PIL format that `path`'s extension names, or UsageError when PIL cannot write it."""
    extension = os.path.splitext(os.fspath(path))[1].lower()
    Image.init()
    name = Image.registered_extensions().get(extension)
    if name is None or name not in Image.SAVE:
        raise UsageError(
            f"{what} {path}: cannot write images with the extension {extension or '(none)'!r}; "
            f"use .png (lossless) or another extension PIL writes, such as "
            f"{', '.join(COMMON_IMAGE_EXTENSIONS[1:])}"
        )
    return name


@contextlib.contextmanager
def removed_if_left_empty(folder) -> Iterator[None]:
    """Removes `folder` when the block fails and leaves it empty, if it did not exist before: a
    refused run leaves no trace (a folder with anything in it is never touched)."""
    existed = os.path.exists(folder)
    try:
        yield
    except BaseException:
        if not existed and os.path.isdir(folder) and not os.listdir(folder):
            os.rmdir(folder)
        raise
