"""The training data of a config: record source, this process's batch stream, run length."""

from __future__ import annotations

from collections.abc import Iterator

import jax
import ml_collections

from ..data import folders, pipeline, scenes
from ..modeling.sam import SAM_VARIANTS

# Fields of a pipeline batch the step reads; the rest (occlusion) stays on the host.
DEVICE_FIELDS = (
    "image",
    "mask",
    "box",
    "box_valid",
    "point_coords",
    "point_labels",
    "mask_input",
    "mask_valid",
    "kind",
    "num_corrupt_skipped",
)


def make_source(config: ml_collections.ConfigDict):
    """The record source (`pipeline.RecordSource`) the config names."""
    data = config.data
    if data.source == "scenes":
        return scenes.SceneDataset(
            data.num_scenes,
            seed=data.scene_seed,
            size=data.scene_size,
            max_objects=data.max_objects,
            family=data.scene_family,
        )
    if data.source == "hqseg44k":
        return pipeline.pair_source(
            data.root, tuple(data.datasets), allow_unmatched=data.allow_unmatched
        )
    pairs = folders.folder_pairs(
        data.image_dir,
        data.mask_dir,
        image_exts=tuple(data.image_exts),
        mask_exts=tuple(data.mask_exts),
        allow_unmatched=data.allow_unmatched,
    )
    return pipeline.PairSource(pairs)


def make_dataset(config: ml_collections.ConfigDict, source):
    """This process's slice of the training stream (a Grain IterDataset of host-local batches)."""
    data = config.data
    return pipeline.make_train_dataset(
        source,
        image_size=SAM_VARIANTS[config.model_type].img_size,
        batch_size=config.batch_size // jax.process_count(),
        seed=config.seed,
        mixture=dict(data.mixture.to_dict()),
        occlusion_prob=data.occlusion_prob,
        lsj_range=tuple(data.lsj_range) if data.use_lsj else None,
        num_workers=data.num_workers,
        shard_index=jax.process_index(),
        shard_count=jax.process_count(),
        skip_corrupt=data.skip_corrupt,
        flip_prob=data.flip_prob,
        read_threads=data.read_threads,
        prefetch_batches=data.prefetch_batches,
        target_instance=data.get("target_instance", "random"),
    )


def iterate_batches(config, source=None) -> Iterator[dict]:
    """This process's host batches for `config` (benchmarks, tests and debugging)."""
    source = make_source(config) if source is None else source
    return iter(make_dataset(config, source))


def steps_per_epoch(config: ml_collections.ConfigDict, num_records: int) -> int:
    return max(1, num_records // config.batch_size)


def total_steps(config: ml_collections.ConfigDict, num_records: int) -> int:
    """config.total_steps when set, else num_epochs epochs (at least one step)."""
    if config.total_steps is not None:
        return int(config.total_steps)
    return max(1, round(config.num_epochs * steps_per_epoch(config, num_records)))
