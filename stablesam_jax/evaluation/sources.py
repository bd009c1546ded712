"""Evaluation images: datasets as random-access `Sample` sources, loaded ahead of the loop with
their prompts."""

from __future__ import annotations

import collections
import concurrent.futures
from collections.abc import Callable, Iterable, Mapping

import numpy as np

from ..data.pipeline import EvalSource
from ..data.prompts import eval_prompts, image_seed
from .interface import Sample
from .protocol import check_name
from .specs import DatasetSpec


class SampleSource:
    """Random access to `Sample`s, capped at `max_images`."""

    def __init__(self, source, max_images: int | None):
        self.source = source
        self.length = len(source) if max_images is None else min(len(source), int(max_images))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Sample:
        item = self.source[index]
        if isinstance(item, Sample):
            return item
        if isinstance(item, dict):  # a record source not wrapped in EvalSource
            image, mask, name = EvalSource([item])[0]
        else:
            image, mask, *rest = item
            name = rest[0] if rest else f"image_{index:06d}"
        return Sample(np.asarray(image), np.asarray(mask, dtype=bool), str(name))


def as_sample_sources(datasets, max_images: int | None = None) -> dict[str, SampleSource]:
    """{name: source} from a mapping name -> DatasetSpec | EvalSource | record source | sequence
    of (image, mask[, name]), or a list of DatasetSpecs."""
    if isinstance(datasets, Mapping):
        items = list(datasets.items())
    else:
        items = [(spec.name, spec) for spec in datasets]
    sources = {}
    for name, dataset in items:
        check_name(name, "dataset")
        cap = max_images
        if isinstance(dataset, DatasetSpec):
            if dataset.max_images is not None:
                cap = dataset.max_images if cap is None else min(cap, dataset.max_images)
            dataset = dataset.open()
        sources[name] = SampleSource(dataset, cap)
    return sources


def load_with_prompts(source, index, prompt_types, num_prompts, seed):
    """(sample, {prompt_type: prompts}); prompts None for an empty mask (nothing to prompt)."""
    sample = source[index]
    if sample.mask.shape != sample.image.shape[:2]:
        raise ValueError(
            f"{sample.name}: mask {sample.mask.shape} and image {sample.image.shape[:2]} differ"
        )
    if not sample.mask.any():
        return sample, None
    per_image_seed = image_seed(sample.name, seed)
    prompts = {
        t: eval_prompts(sample.mask, t, num=num_prompts, seed=per_image_seed) for t in prompt_types
    }
    return sample, prompts


def prefetched(items: Iterable, fn: Callable, workers: int, lookahead: int):
    """fn(item) for each item, computed up to `lookahead` items ahead on `workers` threads."""
    if workers <= 0:
        for item in items:
            yield fn(item)
        return
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        pending = collections.deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) > lookahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
