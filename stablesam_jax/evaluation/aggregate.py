"""From per-image values to the report: per-dataset means, then the pooled mean over all images of
all datasets (not the mean of the dataset means)."""

from __future__ import annotations

import collections
import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

from . import diagnostics
from .protocol import METRIC_KEYS, POOLED

Result = Callable[[], Mapping[str, float]]
_PER_IMAGE_KEYS = (*METRIC_KEYS, "drp_a1", "drp_a2", *diagnostics.SCALAR_KEYS)


class DatasetScores:
    """One dataset's per-image values, `values[model][prompt_type][key][image index]`, NaN until
    its result arrives.

    A result is a function returning the image's metrics dict; calling it may wait for the device
    or a metric thread, so results are queued and only collected once the queue outgrows a limit.
    """

    def __init__(self, num: int, models: Iterable[str], prompt_types: Sequence[str]):
        self.num = num
        self.names: list[str | None] = [None] * num
        self.values = {
            m: {t: {k: [math.nan] * num for k in _PER_IMAGE_KEYS} for t in prompt_types}
            for m in models
        }
        # Summed over images, not kept per image: {model: {prompt_type: OffsetSums}}.
        self.offset_sums: dict[str, dict[str, diagnostics.OffsetSums]] = {}
        self.skipped: list[str] = []
        self.skipped_indices: set[int] = set()
        self.pending: collections.deque = collections.deque()

    def skip(self, index: int, name: str) -> None:
        self.skipped.append(name)
        self.skipped_indices.add(index)

    def queue(self, result: Result, model: str, prompt_type: str, index: int, limit: int) -> None:
        self.pending.append((result, model, prompt_type, index))
        self.drain(limit)

    def drain(self, limit: int = 0) -> None:
        while len(self.pending) > limit:
            result, model, prompt_type, index = self.pending.popleft()
            for key, value in result().items():
                if key == diagnostics.SUMS_KEY:
                    by_type = self.offset_sums.setdefault(model, {})
                    by_type[prompt_type] = (
                        value if prompt_type not in by_type else by_type[prompt_type] + value
                    )
                else:
                    self.values[model][prompt_type][key][index] = value

    def per_image(self) -> dict:
        """{"names", "values"} of the images not skipped; keys no image has (drp_a1 of a model
        without routing) are left out."""
        kept = [i for i in range(self.num) if i not in self.skipped_indices]
        return {
            "names": [self.names[i] for i in kept],
            "values": {
                m: {
                    t: {
                        k: [v[i] for i in kept]
                        for k, v in per_key.items()
                        if not all(math.isnan(x) for x in v)
                    }
                    for t, per_key in by_type.items()
                }
                for m, by_type in self.values.items()
            },
        }

    def info(self) -> dict:
        kept = self.num - len(self.skipped_indices)
        return {"num_images": kept, "skipped_empty_masks": self.skipped}


def summarize(per_image: Mapping[str, Sequence[float]]) -> dict:
    """Means of the per-image values (NaN-free by construction) plus the image count."""
    count = len(per_image["miou"])
    summary = {
        key: float(np.mean(per_image[key])) if count else float("nan") for key in METRIC_KEYS
    }
    for key in ("drp_a1", "drp_a2"):
        if per_image.get(key):
            summary[key] = float(np.mean(per_image[key]))
    summary["num_images"] = count
    return summary


def _pooled_values(per_image: Mapping[str, dict], model: str, prompt_type: str) -> dict:
    joined: dict[str, list] = {}
    for entry in per_image.values():
        for key, values in entry["values"][model][prompt_type].items():
            joined.setdefault(key, []).extend(values)
    joined.setdefault("miou", [])
    return joined


def summaries(
    per_image: Mapping[str, dict], models: Iterable[str], prompt_types: Sequence[str]
) -> dict:
    """The report's "results": {dataset or POOLED: {model: {prompt_type: `summarize`}}}, from
    {dataset: `DatasetScores.per_image()`}."""
    models = list(models)
    results = {
        name: {m: {t: summarize(entry["values"][m][t]) for t in prompt_types} for m in models}
        for name, entry in per_image.items()
    }
    results[POOLED] = {
        m: {t: summarize(_pooled_values(per_image, m, t)) for t in prompt_types} for m in models
    }
    return results


def _pooled_sums(offset_sums: Mapping[str, dict], model: str, prompt_type: str):
    parts = [s[model][prompt_type] for s in offset_sums.values() if prompt_type in s.get(model, {})]
    return sum(parts[1:], parts[0]) if parts else None


def _model_diagnostics(values: Mapping, sums: Mapping, model: str, prompt_types) -> dict | None:
    by_type = {
        t: diagnostics.summarize(values[t], sums.get(model, {}).get(t)) for t in prompt_types
    }
    return by_type if any(by_type.values()) else None


def diagnostics_summaries(
    per_image: Mapping[str, dict],
    offset_sums: Mapping[str, dict],
    models: Iterable[str],
    prompt_types: Sequence[str],
) -> dict:
    """The report's "diagnostics": {dataset or POOLED: {model: {prompt_type:
    `diagnostics.summarize`}}} for the models that have them, from {dataset:
    `DatasetScores.per_image()`} and {dataset: `DatasetScores.offset_sums`}."""
    models = list(models)
    out: dict = {}
    for name, entry in per_image.items():
        sums = offset_sums.get(name, {})
        out[name] = {
            m: d
            for m in models
            if (d := _model_diagnostics(entry["values"][m], sums, m, prompt_types)) is not None
        }
    pooled: dict = {}
    for m in models:
        by_type = {
            t: diagnostics.summarize(
                _pooled_values(per_image, m, t), _pooled_sums(offset_sums, m, t)
            )
            for t in prompt_types
        }
        if any(by_type.values()):
            pooled[m] = by_type
    out[POOLED] = pooled
    return out
