"""Readers for the image/mask folder layouts of HQ-SAM's data release (HQSeg-44K and the HQ eval sets).

Every set is a flat folder of RGB images and a folder of binary masks (0/255 PNG) matched by file
stem. The registry below records where each set lives under the data root; `find_pairs` turns a set
name into sorted (image, mask) path pairs and `load_pair` decodes one pair, raising `DataError` with
a message that says which file is wrong and what to do about it.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..utils.io import ImageReadError
from ..utils.io import load_image as decode_image

MASK_THRESHOLD = 128  # HQ-SAM's convention: mask pixels > 128 are foreground.

_HOW_TO_GET_DATA = (
    "Point the data root at the folder that holds HQ-SAM's release (DIS5K/, thin_object_detection/, "
    "cascade_psp/), or generate stand-in data with stablesam_jax.data.scenes.write_scene_folder."
)


class DataError(Exception):
    """A dataset file or folder is missing, unreadable or inconsistent; the message names the path."""


@dataclasses.dataclass(frozen=True)
class FolderLayout:
    """Where one dataset's images and masks live, relative to the data root.

    `image_dir == mask_dir` is the cascade_psp case: image and mask side by side, told apart by
    extension, so image and mask extensions must not overlap.
    """

    image_dir: str
    mask_dir: str
    image_exts: tuple[str, ...] = (".jpg", ".jpeg")
    mask_exts: tuple[str, ...] = (".png",)


def _cascade_psp(name: str) -> FolderLayout:
    return FolderLayout(f"cascade_psp/{name}", f"cascade_psp/{name}")


DATASETS: dict[str, FolderLayout] = {
    "DIS5K-TR": FolderLayout("DIS5K/DIS-TR/im", "DIS5K/DIS-TR/gt"),
    "DIS5K-VD": FolderLayout("DIS5K/DIS-VD/im", "DIS5K/DIS-VD/gt"),
    "ThinObject5K-TR": FolderLayout(
        "thin_object_detection/ThinObject5K/images_train",
        "thin_object_detection/ThinObject5K/masks_train",
    ),
    "ThinObject5K-TE": FolderLayout(
        "thin_object_detection/ThinObject5K/images_test",
        "thin_object_detection/ThinObject5K/masks_test",
    ),
    "FSS": _cascade_psp("fss_all"),
    "DUTS-TR": _cascade_psp("DUTS-TR"),
    "DUTS-TE": _cascade_psp("DUTS-TE"),
    "ECSSD": _cascade_psp("ecssd"),
    "MSRA10K": _cascade_psp("MSRA_10K"),
    "COIFT": FolderLayout(
        "thin_object_detection/COIFT/images", "thin_object_detection/COIFT/masks"
    ),
    "HR-SOD": FolderLayout(
        "thin_object_detection/HRSOD/images", "thin_object_detection/HRSOD/masks_max255"
    ),
}

HQSEG44K_TRAIN: tuple[str, ...] = (
    "DIS5K-TR",
    "ThinObject5K-TR",
    "FSS",
    "DUTS-TR",
    "DUTS-TE",
    "ECSSD",
    "MSRA10K",
)
HQ_EVAL: tuple[str, ...] = ("DIS5K-VD", "ThinObject5K-TE", "COIFT", "HR-SOD")


def _files_by_stem(directory: Path, exts: Sequence[str]) -> dict[str, Path]:
    wanted = {e.lower() for e in exts}
    found: dict[str, Path] = {}
    with os.scandir(directory) as entries:
        for entry in entries:
            if not entry.is_file():
                continue
            stem, ext = os.path.splitext(entry.name)
            if ext.lower() in wanted:
                if stem in found:
                    raise DataError(
                        f"{directory}: two files share the stem {stem!r} "
                        f"({found[stem].name}, {entry.name}); keep one of them."
                    )
                found[stem] = Path(entry.path)
    return found


def _describe_unmatched(stems: set[str], limit: int = 5) -> str:
    shown = ", ".join(sorted(stems)[:limit])
    more = f" and {len(stems) - limit} more" if len(stems) > limit else ""
    return f"{shown}{more}"


def folder_pairs(
    image_dir: str | os.PathLike,
    mask_dir: str | os.PathLike,
    *,
    image_exts: Sequence[str] = (".jpg", ".jpeg"),
    mask_exts: Sequence[str] = (".png",),
    allow_unmatched: bool = False,
) -> list[tuple[Path, Path]]:
    """(image, mask) path pairs matched by stem, sorted by stem.

    A stem found on only one side is an error (a half-copied dataset trains silently on a subset
    otherwise); `allow_unmatched=True` drops such files with a warning instead.
    """
    image_dir, mask_dir = Path(image_dir), Path(mask_dir)
    for kind, directory in (("image", image_dir), ("mask", mask_dir)):
        if not directory.is_dir():
            raise DataError(f"{kind} directory {directory} does not exist. {_HOW_TO_GET_DATA}")
    if {e.lower() for e in image_exts} & {e.lower() for e in mask_exts}:
        raise ValueError(f"image_exts {image_exts} and mask_exts {mask_exts} must not overlap")
    images = _files_by_stem(image_dir, image_exts)
    masks = _files_by_stem(mask_dir, mask_exts)
    if not images:
        raise DataError(f"no images ({'/'.join(image_exts)}) in {image_dir}. {_HOW_TO_GET_DATA}")
    images_only = images.keys() - masks.keys()
    masks_only = masks.keys() - images.keys()
    if images_only or masks_only:
        problems = []
        if images_only:
            problems.append(
                f"{len(images_only)} image(s) in {image_dir} have no mask in {mask_dir} "
                f"(stems: {_describe_unmatched(images_only)})"
            )
        if masks_only:
            problems.append(
                f"{len(masks_only)} mask(s) in {mask_dir} have no image in {image_dir} "
                f"(stems: {_describe_unmatched(masks_only)})"
            )
        message = "; ".join(problems)
        if not allow_unmatched:
            raise DataError(
                f"{message}. Restore the missing files, or pass allow_unmatched=True to skip them."
            )
        warnings.warn(f"skipping unmatched files: {message}", stacklevel=2)
    return [(images[stem], masks[stem]) for stem in sorted(images.keys() & masks.keys())]


def dataset_dirs(root: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """The (image_dir, mask_dir) of a registered dataset under `root`."""
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    layout = DATASETS[name]
    return Path(root) / layout.image_dir, Path(root) / layout.mask_dir


def find_pairs(
    root: str | os.PathLike, name: str, *, allow_unmatched: bool = False
) -> list[tuple[Path, Path]]:
    """(image, mask) path pairs of the registered dataset `name` under `root`, sorted by stem."""
    image_dir, mask_dir = dataset_dirs(root, name)
    layout = DATASETS[name]
    return folder_pairs(
        image_dir,
        mask_dir,
        image_exts=layout.image_exts,
        mask_exts=layout.mask_exts,
        allow_unmatched=allow_unmatched,
    )


_UNREADABLE_ADVICE = (
    "The file is missing, corrupt or truncated: re-download or remove it (training can skip such "
    "files with skip_corrupt=True)."
)


def _open_fully(path: Path, what: str) -> Image.Image:
    # PIL decodes lazily: without load() a truncated JPEG would only fail later, far from its path.
    try:
        image = Image.open(path)
        image.load()
        return image
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read {what} {path}: {exc}. {_UNREADABLE_ADVICE}") from exc


def load_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as uint8 HxWx3 RGB (`utils.io.load_image`); `DataError` if unreadable."""
    try:
        return decode_image(path)
    except ImageReadError as exc:
        raise DataError(f"{exc}. {_UNREADABLE_ADVICE}") from exc


def load_mask(path: str | os.PathLike) -> np.ndarray:
    """A mask file as bool HxW: foreground where the value is > 128."""
    image = _open_fully(Path(path), "mask")
    if image.mode in ("RGB", "RGBA"):
        # HQ-SAM reads the first channel of 3-channel masks; luminance would differ on coloured ones.
        values = np.asarray(image)[..., 0]
    elif image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        values = np.asarray(image)
    else:
        values = np.asarray(image.convert("L"))
    return values > MASK_THRESHOLD


def load_pair(
    image_path: str | os.PathLike, mask_path: str | os.PathLike
) -> tuple[np.ndarray, np.ndarray]:
    """(image uint8 HxWx3 RGB, mask bool HxW) of one pair; `DataError` if unreadable or mismatched."""
    image = load_image(image_path)
    mask = load_mask(mask_path)
    if image.shape[:2] != mask.shape:
        raise DataError(
            f"mask {mask_path} is {mask.shape[0]}x{mask.shape[1]} (HxW) but image {image_path} is "
            f"{image.shape[0]}x{image.shape[1]}: the pair does not belong together. Replace the "
            "mask with one at the image's resolution, or remove the pair."
        )
    return image, mask
