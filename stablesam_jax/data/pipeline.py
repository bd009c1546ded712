"""Grain input pipeline for RTS training (flip, large-scale jitter, synthetic occlusion, prompts)
and a plain random-access source for evaluation.

Record sources. Any object with `__len__` and `__getitem__(i) -> {"image": uint8[H, W, 3],
"masks": bool[K, H, W], "name": str}` works: `PairSource` over image/mask files (K = 1) and
`scenes.SceneDataset` (K instances per scene). Loading happens inside the pipeline's transform
rather than in a Grain source, so a corrupt file can be replaced by another record without
changing the number or shape of batches.

Determinism. The pipeline is `range(len(source))[shard::count] -> shuffle -> repeat -> map ->
batch`. Each record's randomness comes from `np.random.default_rng((seed, epoch, source_index))`,
never from global state or from which process or thread computes it, and batches are formed
before the iterator is split across worker processes. So the same seed gives the same batches
with 0 or N workers, and `DatasetIterator.get_state()` / `set_state()` resume exactly.

Corrupt files. By default the `DataError` naming the file stops training. With
`skip_corrupt=True` the record is replaced by another, randomly drawn (deterministically) record,
and the batch field `num_corrupt_skipped` (int32[B]) counts the files skipped for each example.
The count travels with the data, so it is exact with worker processes, where a counter object in
the trainer's process would never see the workers' increments: the trainer sums it per step and
logs it. Each skip is also logged with its path (from whichever process hit it).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import grain
import numpy as np
from absl import flags
from PIL import Image

from .folders import (
    HQSEG44K_TRAIN,
    DataError,
    find_pairs,
    load_pair,
)
from .prompts import RTS_KINDS, occlude, sample_rts_prompt
from .scenes import largest_instance

logger = logging.getLogger(__name__)

PAD_PIXEL = 128  # LSJ pads the image bottom/right with this value (and the mask with 0)
MAX_POINTS = 10
# Which instance of a multi-instance record a training example targets (`make_train_dataset`).
TARGET_INSTANCES = ("random", "largest")
OCCLUSION_NONE, OCCLUSION_OCCLUDER, OCCLUSION_OCCLUDEE = 0, 1, 2


class RecordSource(Protocol):
    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict: ...


class PairSource:
    """Random access to (image, mask) file pairs; record i is `{"image", "masks": [1, H, W], "name"}`.

    Holds only paths, so it pickles cheaply into Grain worker processes.
    """

    def __init__(self, pairs: Sequence[tuple[str | os.PathLike, str | os.PathLike]], names=None):
        self.pairs = [(str(image), str(mask)) for image, mask in pairs]
        if names is not None and len(names) != len(self.pairs):
            raise ValueError(f"{len(names)} names for {len(self.pairs)} pairs")
        self.names = list(names) if names is not None else [Path(p[0]).stem for p in self.pairs]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        image_path, mask_path = self.pairs[index]
        image, mask = load_pair(image_path, mask_path)
        return {"image": image, "masks": mask[None], "name": self.names[index]}


def pair_source(
    root: str | os.PathLike, names: Sequence[str] = HQSEG44K_TRAIN, *, allow_unmatched=False
) -> PairSource:
    """All pairs of the registered datasets `names` under `root` (default: HQSeg-44K's train sets).

    Record names are "<dataset>/<stem>".
    """
    pairs, record_names = [], []
    for name in names:
        found = find_pairs(root, name, allow_unmatched=allow_unmatched)
        pairs.extend(found)
        record_names.extend(f"{name}/{Path(image).stem}" for image, _ in found)
    return PairSource(pairs, record_names)


# ----------------------------------------------------------------------------------------------
# Geometric augmentation
# ----------------------------------------------------------------------------------------------


def _resize_crop(array: np.ndarray, full_hw, crop_yx, crop_hw) -> np.ndarray:
    """Crop `crop_hw` at `crop_yx` out of `array` resized to `full_hw`, without the full resize.

    PIL's `box` resamples only the source region behind the crop, with the filter support of the
    full resize, so the result equals resize-then-crop at a fraction of the cost for large scales.
    """
    src_h, src_w = array.shape[:2]
    sy, sx = src_h / full_hw[0], src_w / full_hw[1]
    (y0, x0), (h, w) = crop_yx, crop_hw
    box = (x0 * sx, y0 * sy, (x0 + w) * sx, (y0 + h) * sy)
    return np.asarray(Image.fromarray(array).resize((w, h), Image.BILINEAR, box=box))


def _resize_mask(mask: np.ndarray, full_hw, crop_yx, crop_hw) -> np.ndarray:
    # Bilinear then >= 128 keeps boundaries smooth; nearest would alias thin structures.
    return _resize_crop(mask.astype(np.uint8) * 255, full_hw, crop_yx, crop_hw) >= 128


def augment(
    image: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    *,
    image_size: int,
    lsj_range: tuple[float, float] | None = (0.1, 2.0),
    flip_prob: float = 0.5,
    max_crop_tries: int = 10,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Horizontal flip, then large-scale jitter onto an `image_size` square.

    LSJ resizes so the long side is `scale * image_size`, scale ~ U[lsj_range], takes a random
    `image_size` crop and pads bottom/right (image 128, mask 0). A crop that misses the target is
    redrawn (offset and scale) up to `max_crop_tries` times, then the sample falls back to no
    jitter (long side = image_size, as SAM's own preprocessing). `lsj_range=None` means no jitter.
    Returns (image uint8[S, S, 3], mask bool[S, S], input_hw int32[2] = valid region before pad).
    """
    if rng.random() < flip_prob:
        image, mask = image[:, ::-1], mask[:, ::-1]
    image, mask = np.ascontiguousarray(image), np.ascontiguousarray(mask)
    height, width = mask.shape
    long_side = max(height, width)

    def fit(scale: float):
        ratio = scale * image_size / long_side
        return max(1, round(height * ratio)), max(1, round(width * ratio))

    window = None
    tries = max_crop_tries if lsj_range is not None else 0
    for _ in range(tries):
        full_hw = fit(rng.uniform(*lsj_range))
        crop_hw = (min(full_hw[0], image_size), min(full_hw[1], image_size))
        crop_yx = (
            int(rng.integers(0, full_hw[0] - crop_hw[0] + 1)),
            int(rng.integers(0, full_hw[1] - crop_hw[1] + 1)),
        )
        cropped_mask = _resize_mask(mask, full_hw, crop_yx, crop_hw)
        if cropped_mask.any():
            window = (full_hw, crop_yx, crop_hw)
            break
    if window is None:
        full_hw = fit(1.0)
        window = (full_hw, (0, 0), full_hw)
        cropped_mask = _resize_mask(mask, *window)
        if not cropped_mask.any():
            # A target so thin that bilinear downscaling erased it: keep every touched pixel.
            cropped_mask = _resize_crop(mask.astype(np.uint8) * 255, *window) > 0
    cropped_image = _resize_crop(image, *window)
    crop_h, crop_w = window[2]
    out_image = np.full((image_size, image_size, 3), PAD_PIXEL, dtype=np.uint8)
    out_mask = np.zeros((image_size, image_size), dtype=bool)
    out_image[:crop_h, :crop_w] = cropped_image
    out_mask[:crop_h, :crop_w] = cropped_mask
    return out_image, out_mask, np.array([crop_h, crop_w], dtype=np.int32)


# ----------------------------------------------------------------------------------------------
# Per-record transform
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    image_size: int
    seed: int
    mixture: Any
    occlusion_prob: float
    lsj_range: tuple[float, float] | None = (0.1, 2.0)
    flip_prob: float = 0.5
    max_crop_tries: int = 10
    skip_corrupt: bool = False
    # Bounds the search for a readable replacement, so a data root that is mostly broken fails
    # loudly instead of spinning.
    max_corrupt_replacements: int = 32
    max_points: int = MAX_POINTS
    target_instance: str = "random"

    @property
    def low_res(self) -> int:
        return self.image_size // 4  # SAM's mask logits are 1/4 of the input side


def _pick_instance(
    record: dict, rng: np.random.Generator, source_index: int, how: str = "random"
) -> np.ndarray:
    """One instance of a multi-instance record: a uniformly drawn non-empty one, or ("largest")
    the one with the most pixels, the object a single-mask dataset and the evaluator keep."""
    masks = np.asarray(record["masks"], dtype=bool)
    if masks.ndim == 2:
        masks = masks[None]
    nonempty = np.flatnonzero(masks.reshape(len(masks), -1).any(axis=1))
    if nonempty.size == 0:
        raise DataError(
            f"record {source_index} ({record.get('name', '?')}) has an empty mask (no pixel > 128): "
            "fix or remove its mask file."
        )
    if how == "largest":
        return largest_instance(masks)
    return masks[int(nonempty[rng.integers(nonempty.size)])]


def _other_index(rng: np.random.Generator, length: int, excluded: int) -> int:
    """A uniformly drawn index in [0, length) other than `excluded` (length must be >= 2)."""
    index = int(rng.integers(length - 1))
    return index + (index >= excluded)


class TrainTransform:
    """Turns (position in the repeated stream, source index) into one fixed-shape training example.

    A plain class (not a closure) so Grain can pickle it into spawned worker processes.
    """

    def __init__(self, source: RecordSource, config: TrainConfig, epoch_length: int):
        self.source = source
        self.config = config
        self.epoch_length = epoch_length

    def _load(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        record = self.source[index]
        mask = _pick_instance(record, rng, index, self.config.target_instance)
        return np.asarray(record["image"], dtype=np.uint8), mask

    def _load_or_replace(self, source_index: int, rng: np.random.Generator):
        skipped = 0
        index = source_index
        while True:
            try:
                image, mask = self._load(index, rng)
                return image, mask, skipped
            except DataError as error:
                if not self.config.skip_corrupt or len(self.source) < 2:
                    raise
                skipped += 1
                logger.warning("skipping corrupt record %d: %s", index, error)
                if skipped > self.config.max_corrupt_replacements:
                    raise DataError(
                        f"{skipped} corrupt records in a row while replacing record "
                        f"{source_index}; the data root looks broken (last error: {error})"
                    ) from error
                index = _other_index(rng, len(self.source), index)

    def _occlude(self, image, mask, input_hw, source_index, rng):
        other = _other_index(rng, len(self.source), source_index)
        try:
            occluder_image, occluder_mask = self._load(other, rng)
        except DataError as error:
            if not self.config.skip_corrupt:
                raise
            logger.warning("skipping corrupt occluder record %d: %s", other, error)
            return image, mask, OCCLUSION_NONE, 1
        occluder_image, occluder_mask = _shrink_to(occluder_image, occluder_mask, mask.shape[0])
        mode = OCCLUSION_OCCLUDER if rng.random() < 0.5 else OCCLUSION_OCCLUDEE
        height, width = (int(v) for v in input_hw)
        # Occlude inside the valid region only, so the padding stays the constant SAM expects.
        new_valid_image, new_valid_mask = occlude(
            image[:height, :width],
            mask[:height, :width],
            occluder_image,
            occluder_mask,
            rng,
            "occluder" if mode == OCCLUSION_OCCLUDER else "occludee",
        )
        new_valid_mask = np.asarray(new_valid_mask, dtype=bool)
        if not new_valid_mask.any():
            return image, mask, OCCLUSION_NONE, 0  # fully hidden target: no ground truth left
        if np.array_equal(new_valid_image, image[:height, :width]):
            return image, mask, OCCLUSION_NONE, 0  # occlude() gave up, or the paste hid behind
        image, mask = image.copy(), mask.copy()
        image[:height, :width] = new_valid_image
        mask[:height, :width] = new_valid_mask
        return image, mask, mode, 0

    def __call__(self, index: int, source_index: int) -> dict:
        config = self.config
        source_index = int(source_index)
        epoch = index // self.epoch_length
        rng = np.random.default_rng((config.seed, epoch, source_index))
        image, mask, skipped = self._load_or_replace(source_index, rng)
        image, mask, input_hw = augment(
            image,
            mask,
            rng,
            image_size=config.image_size,
            lsj_range=config.lsj_range,
            flip_prob=config.flip_prob,
            max_crop_tries=config.max_crop_tries,
        )
        occlusion = OCCLUSION_NONE
        if len(self.source) > 1 and rng.random() < config.occlusion_prob:
            image, mask, occlusion, occluder_skipped = self._occlude(
                image, mask, input_hw, source_index, rng
            )
            skipped += occluder_skipped
        prompt = sample_rts_prompt(
            mask, rng, config.mixture, max_points=config.max_points, low_res=config.low_res
        )
        example = {
            "image": image,
            "mask": mask,
            "input_hw": input_hw,
            "occlusion": np.int32(occlusion),
            "num_corrupt_skipped": np.int32(skipped),
        }
        for key, value in prompt.items():
            value = np.asarray(value)
            # Python ints (e.g. the prompt kind) would batch as int64; keep the batch int32.
            example[key] = value.astype(np.int32) if value.dtype == np.int64 else value
        return example


def _shrink_to(image: np.ndarray, mask: np.ndarray, max_side: int):
    """Downscale an occluder so its long side is at most `max_side` (it is pasted smaller anyway)."""
    height, width = mask.shape
    if max(height, width) <= max_side:
        return image, mask
    ratio = max_side / max(height, width)
    hw = (max(1, round(height * ratio)), max(1, round(width * ratio)))
    return _resize_crop(image, hw, (0, 0), hw), _resize_mask(mask, hw, (0, 0), hw)


# ----------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------


def make_train_dataset(
    source: RecordSource,
    *,
    image_size: int,
    batch_size: int,
    seed: int,
    mixture: Any,
    occlusion_prob: float,
    lsj_range: tuple[float, float] | None = (0.1, 2.0),
    num_workers: int = 0,
    shard_index: int = 0,
    shard_count: int = 1,
    skip_corrupt: bool = False,
    flip_prob: float = 0.5,
    read_threads: int = 2,
    prefetch_batches: int = 2,
    target_instance: str = "random",
) -> grain.IterDataset:
    """Infinite, shuffled (reshuffled each epoch) stream of fixed-shape training batches.

    Each batch: image uint8[B, S, S, 3], mask bool[B, S, S], input_hw int32[B, 2], the prompt
    fields of `prompts.sample_rts_prompt` (box, box_valid, point_coords, point_labels, mask_input,
    mask_valid, kind), occlusion int32[B] (0 none, 1 occluder, 2 occludee) and
    num_corrupt_skipped int32[B]. `mixture` maps RTS prompt kinds to weights (None: all kinds
    equally likely). `batch_size` is per host. For multi-host training pass
    shard_index=jax.process_index(), shard_count=jax.process_count(): hosts read disjoint slices
    (records shard_index, shard_index + shard_count, ...). `iter(ds)` gives a Grain
    DatasetIterator whose `get_state()` / `set_state()` checkpoint and resume it exactly;
    num_workers > 0 computes batches in spawned processes (same batches as num_workers=0).
    `target_instance`: which instance of a multi-instance record (generated scenes) is the target,
    "random" or "largest" (`TARGET_INSTANCES`).
    """
    if target_instance not in TARGET_INSTANCES:
        raise ValueError(
            f"target_instance must be one of {TARGET_INSTANCES}, got {target_instance!r}"
        )
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index {shard_index} not in [0, {shard_count})")
    if len(source) < shard_count:
        raise ValueError(f"{len(source)} records cannot feed {shard_count} shards")
    if lsj_range is not None and not 0 < lsj_range[0] <= lsj_range[1]:
        raise ValueError(f"lsj_range must be (low, high) with 0 < low <= high, got {lsj_range}")
    if mixture is None:
        mixture = {kind: 1.0 for kind in RTS_KINDS}
    config = TrainConfig(
        image_size=image_size,
        seed=seed,
        mixture=mixture,
        occlusion_prob=occlusion_prob,
        lsj_range=None if lsj_range is None else tuple(lsj_range),
        flip_prob=flip_prob,
        skip_corrupt=skip_corrupt,
        target_instance=target_instance,
    )
    indices = grain.MapDataset.range(len(source))[shard_index::shard_count]
    epoch_length = len(indices)
    dataset = (
        indices.shuffle(seed=seed)
        .repeat(None)
        .map_with_index(TrainTransform(source, config, epoch_length))
        # Batching before the split across workers keeps batches independent of num_workers.
        .batch(batch_size, drop_remainder=True)
        .to_iter_dataset(
            grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch_batches)
        )
    )
    if num_workers > 0:
        _mark_absl_flags_parsed()
        dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return dataset


def _mark_absl_flags_parsed() -> None:
    # Grain 0.2.18 reads an absl flag when worker processes start and JAX is importable; in a
    # script not run through absl.app that raises UnparsedFlagAccessError (google/grain#1355).
    # Marking flags parsed keeps every flag at its default, as Grain's own config handling does.
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


class EvalSource:
    """Random access to `(image uint8[H, W, 3], mask bool[H, W], name)` at original resolution.

    Multi-instance records (synthetic scenes) are evaluated on their largest instance, the same
    object `scenes.write_scene_folder` keeps.
    """

    def __init__(self, source: RecordSource):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        record = self.source[index]
        masks = np.asarray(record["masks"], dtype=bool)
        if masks.ndim == 2:
            masks = masks[None]
        return record["image"], largest_instance(masks), str(record["name"])

    def __iter__(self):
        for index in range(len(self)):
            yield self[index]


def make_eval_source(
    source: RecordSource | str | os.PathLike, name: str | None = None, *, allow_unmatched=False
) -> EvalSource:
    """An `EvalSource` over a record source, or over the registered dataset `name` under a root.

    `make_eval_source(root, "DIS5K-VD")` reads real files; `make_eval_source(SceneDataset(...))`
    evaluates on synthetic scenes. Unreadable files raise `DataError` when accessed.
    """
    if isinstance(source, (str, os.PathLike)):
        if name is None:
            raise ValueError("make_eval_source(root, name): name the dataset, e.g. 'DIS5K-VD'")
        pairs = find_pairs(source, name, allow_unmatched=allow_unmatched)
        return EvalSource(PairSource(pairs, [f"{name}/{Path(p[0]).stem}" for p in pairs]))
    return EvalSource(source)
