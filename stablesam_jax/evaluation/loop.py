"""The evaluation loop: every model on every dataset and prompt type (the protocol: `protocol`).

Per dataset, images are loaded ahead on threads with their prompts (`sources`), taken in chunks of
one encoder batch, embedded once per encoder group (`predictors.encoder_groups`) and scored per
model and prompt type; `aggregate` turns the per-image values into the report's means.

For JAX models the upsampling, thresholding and the metrics' pixel counts run on the device
(`device_metrics`) and only counts come back: results are queued so the device runs ahead of the
host. Masks come back to the host only for injected predictors or `metrics_on_device=False`; their
metrics run on `metric_workers` threads.

In-process use (the demo): `evaluate(models, datasets, prompt_types)` returns the pooled
`{model: {prompt_type: {"miou", "mbiou", "msf", "num_images"[, "drp_a1", "drp_a2"]}}}`;
`evaluate_report` returns the full report that `job.run` writes to results.json.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence

import jax
import numpy as np

from ..utils.progress import Progress
from . import metrics
from .aggregate import DatasetScores, diagnostics_summaries, summaries
from .interface import Prediction, Predictor, PromptBatch
from .predictors import SamEvalPredictor, as_predictors, encoder_groups
from .protocol import (
    DEFAULT_PROMPT_TYPES,
    POOLED,
    RESULTS_SCHEMA_VERSION,
    check_protocol,
    max_points_for,
)
from .sources import as_sample_sources, load_with_prompts, prefetched
from .specs import ModelSpec

# Results waiting to be collected: device counts are small, so many may queue; a host result
# holds a prompt batch of full-size masks, so few per metric thread.
_DEVICE_QUEUE = 64
_HOST_QUEUE_PER_WORKER = 4


@dataclasses.dataclass(frozen=True)
class _Settings:
    """What every dataset of one `evaluate_report` call is scored with."""

    predictors: Mapping[str, Predictor]
    groups: list[list[str]]
    prompt_types: tuple[str, ...]
    num_prompts: int
    seed: int
    batch: int  # images per encoder call
    max_points: int
    progress: bool
    loader_workers: int
    metric_workers: int
    metrics_on_device: bool
    metric_pool: concurrent.futures.ThreadPoolExecutor | None
    diagnostics: bool = False


def _image_metrics(prediction: Prediction, gt: np.ndarray) -> dict[str, float]:
    """One image's metrics from host masks: the dict `metrics_from_counts` gives on device."""
    masks = np.asarray(prediction.masks, dtype=bool)
    if masks.shape[1:] != gt.shape:
        raise ValueError(f"predicted masks {masks.shape[1:]} but ground truth {gt.shape}")
    result = {
        "miou": 100.0 * float(np.mean(metrics.mask_iou_batch(masks, gt))),
        "mbiou": 100.0 * float(np.mean(metrics.boundary_iou_batch(masks, gt))),
        "msf": 100.0 * float(metrics.stability_score(masks)),
    }
    if prediction.drp_a1 is not None:
        result["drp_a1"] = float(np.mean(prediction.drp_a1))
    if prediction.drp_a2 is not None:
        result["drp_a2"] = float(np.mean(prediction.drp_a2))
    return result


def _chunks(loaded: Iterable[tuple], size: int, num: int) -> Iterator[list[tuple]]:
    """Loaded (index, sample, prompts) items in chunks of `size`, the last one shorter."""
    chunk: list = []
    for item in loaded:
        chunk.append(item)
        if len(chunk) >= size or item[0] == num - 1:
            yield chunk
            chunk = []


def _record_names(chunk: Sequence[tuple], scores: DatasetScores, dataset_name: str) -> None:
    """Names the chunk's images; those with an empty mask (no prompts) are skipped, loudly."""
    for index, sample, prompts in chunk:
        scores.names[index] = sample.name
        if prompts is None:
            scores.skip(index, sample.name)
            # stacklevel: past _evaluate_dataset and evaluate_report, at evaluate_report's caller.
            warnings.warn(f"{dataset_name}: {sample.name} has an empty mask; skipped", stacklevel=4)


def _embed(predictor: Predictor, images: list[np.ndarray], rows: int) -> list:
    if isinstance(predictor, SamEvalPredictor):
        # A fixed batch size: a dataset's last, shorter chunk reuses the encoder's compilation.
        return predictor.embed(images, rows=rows)
    return predictor.embed(images)


def _score(run: _Settings, scores: DatasetScores, key: tuple, sample, embedding, prompts) -> None:
    """Queues the metrics of one (model, prompt type, image index) `key`."""
    predictor = run.predictors[key[0]]
    if run.metrics_on_device and isinstance(predictor, SamEvalPredictor) and run.diagnostics:
        result = predictor.predict_metrics(sample, embedding, prompts, with_diagnostics=True)
        scores.queue(result, *key, _DEVICE_QUEUE)
        return
    if run.metrics_on_device and hasattr(predictor, "predict_metrics"):
        scores.queue(predictor.predict_metrics(sample, embedding, prompts), *key, _DEVICE_QUEUE)
        return
    prediction = predictor.predict(sample, embedding, prompts)
    if run.metric_pool is None:
        value = _image_metrics(prediction, sample.mask)

        def result():
            return value

    else:
        result = run.metric_pool.submit(_image_metrics, prediction, sample.mask).result
    limit = _HOST_QUEUE_PER_WORKER * max(1, run.metric_workers)
    scores.queue(result, *key, limit)


def _score_chunk(run: _Settings, usable: Sequence[tuple], scores: DatasetScores) -> None:
    """Embeds the chunk's images once per encoder group, then scores each model of the group."""
    if not usable:
        return
    for group in run.groups:
        embeddings = _embed(run.predictors[group[0]], [s.image for _, s, _ in usable], run.batch)
        for model_name in group:
            for (index, sample, prompts), embedding in zip(usable, embeddings):
                for prompt_type in run.prompt_types:
                    batch = PromptBatch.from_prompts(prompts[prompt_type], run.max_points)
                    key = (model_name, prompt_type, index)
                    _score(run, scores, key, sample, embedding, batch)


def _evaluate_dataset(run: _Settings, dataset_name: str, source) -> DatasetScores:
    num = len(source)
    scores = DatasetScores(num, run.predictors, run.prompt_types)
    bar = Progress(num, dataset_name, enabled=run.progress)

    def load(index):
        return index, *load_with_prompts(source, index, run.prompt_types, run.num_prompts, run.seed)

    loaded = prefetched(range(num), load, run.loader_workers, lookahead=2 * run.batch)
    done = 0
    for chunk in _chunks(loaded, run.batch, num):
        _record_names(chunk, scores, dataset_name)
        _score_chunk(run, [(i, s, p) for i, s, p in chunk if p is not None], scores)
        done += len(chunk)
        bar.update(done)
    scores.drain(0)
    return scores


def _metric_threads(workers: int):
    """A pool for host-mask metrics; with no workers, None (they run inline)."""
    if workers <= 0:
        return contextlib.nullcontext()
    return concurrent.futures.ThreadPoolExecutor(workers)


def _describe_predictor(name: str, predictor, models) -> dict:
    spec = models.get(name) if isinstance(models, Mapping) else None
    if spec is None and not isinstance(models, Mapping):
        spec = next((m for m in models if getattr(m, "name", None) == name), None)
    if isinstance(spec, ModelSpec):
        return spec.describe()
    if isinstance(predictor, SamEvalPredictor):
        model = predictor.model
        return {
            "model_type": model.model_type,
            "kind": "sam" if model.plugin_config is None else "stable_sam",
            "in_memory": True,
        }
    return {"predictor": type(predictor).__name__}


def _protocol(prompt_types: Sequence[str], num_prompts: int, seed: int) -> dict:
    return {
        "prompt_types": list(prompt_types),
        "num_prompts": num_prompts,
        "seed": seed,
        "multimask_output": False,
        "mask_threshold": 0.0,
        "boundary_dilation_ratio": 0.02,
        "prompt_seed": "prompts.image_seed(image name, seed)",
    }


def _timing(elapsed: float, images: int, groups: list[list[str]]) -> dict:
    return {
        "seconds": elapsed,
        "images": images,
        "images_per_second": images / elapsed if elapsed > 0 else None,
        "encoder_groups": groups,
    }


def _devices(count: int) -> dict:
    return {
        "count": count,
        "platform": jax.default_backend(),
        "kind": jax.local_devices()[0].device_kind,
    }


def evaluate_report(
    models,
    datasets,
    prompt_types: Sequence[str] = DEFAULT_PROMPT_TYPES,
    num_prompts: int = 20,
    seed: int = 0,
    *,
    max_images: int | None = None,
    image_batch_size: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
    progress: bool = True,
    keep_per_image: bool = True,
    loader_workers: int = 2,
    metric_workers: int = 2,
    metrics_on_device: bool = True,
    diagnostics: bool = True,
) -> dict:
    """Runs every model on every dataset and prompt type; returns the report `job.run` saves.

    models: {name: Sam | ModelSpec | Predictor} or a list of ModelSpecs. datasets: {name:
    DatasetSpec | EvalSource | record source | sequence of (image, mask, name)} or a list of
    DatasetSpecs. image_batch_size: images per encoder call (default: the device count).
    metrics_on_device: JAX models compute the metrics' pixel counts on the device (exactly
    `metrics`' values; a megapixel mask's boundary IoU costs ~0.1 s of host CPU, and the HQ sets
    need ~10^6 of them); other predictors, or False, use `metrics` on host masks with
    `metric_workers` threads. diagnostics: JAX models on the device path also report the DSP
    block's attention on the target and offset statistics (`diagnostics`, docs/design.md,
    "Diagnostics") from the same decode call.
    Report keys: "results" ({dataset or "pooled": {model: {prompt_type: {"miou", "mbiou",
    "msf", "num_images"[, "drp_a1", "drp_a2"]}}}}, values 0-100 except DRP's a1, a2),
    "protocol", "models", "datasets" (image counts, skipped images), "per_image" (when kept),
    "timing", "devices",
    "diagnostics" (when any model has them: {dataset or "pooled": {model: {prompt_type:
    `diagnostics.summarize`}}}).
    """
    prompt_types = check_protocol(prompt_types, num_prompts)
    max_points = max_points_for(prompt_types)
    predictors = as_predictors(models, mesh=mesh, max_points=max_points)
    sources = as_sample_sources(datasets, max_images)
    if not sources:
        raise ValueError("no datasets to evaluate")
    groups = encoder_groups(predictors)
    num_devices = jax.local_device_count()

    per_image: dict = {}
    dataset_info: dict = {}
    offset_sums: dict = {}
    started = time.perf_counter()
    with _metric_threads(metric_workers) as metric_pool:
        run = _Settings(
            predictors=predictors,
            groups=groups,
            prompt_types=prompt_types,
            num_prompts=num_prompts,
            seed=seed,
            batch=max(1, image_batch_size or num_devices),
            max_points=max_points,
            progress=progress,
            loader_workers=loader_workers,
            metric_workers=metric_workers,
            metrics_on_device=metrics_on_device,
            metric_pool=metric_pool,
            diagnostics=diagnostics,
        )
        for dataset_name, source in sources.items():
            scores = _evaluate_dataset(run, dataset_name, source)
            per_image[dataset_name] = scores.per_image()
            dataset_info[dataset_name] = scores.info()
            offset_sums[dataset_name] = scores.offset_sums
    elapsed = time.perf_counter() - started
    total_images = sum(info["num_images"] for info in dataset_info.values())

    report = {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "protocol": _protocol(prompt_types, num_prompts, seed),
        "models": {name: _describe_predictor(name, p, models) for name, p in predictors.items()},
        "datasets": dataset_info,
        "results": summaries(per_image, predictors, prompt_types),
        "timing": _timing(elapsed, total_images, groups),
        "devices": _devices(num_devices),
    }
    diagnosed = diagnostics_summaries(per_image, offset_sums, predictors, prompt_types)
    if diagnosed[POOLED]:
        report["diagnostics"] = diagnosed
    if keep_per_image:
        report["per_image"] = per_image
    return report


def evaluate(
    models,
    datasets,
    prompt_types: Sequence[str] = DEFAULT_PROMPT_TYPES,
    num_prompts: int = 20,
    seed: int = 0,
    **options,
) -> dict:
    """Pooled results `{model: {prompt_type: {"miou", "mbiou", "msf", "num_images"[, "drp_a1",
    "drp_a2"]}}}` (0-100) over all images of all datasets; options as `evaluate_report`."""
    options.setdefault("keep_per_image", False)
    report = evaluate_report(models, datasets, prompt_types, num_prompts, seed, **options)
    return report["results"][POOLED]
