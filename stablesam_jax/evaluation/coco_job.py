"""COCO noisy-box mask mAP (the paper's Table 3) for the job's predictors.

`coco` scores one `predict_fn` and stays numpy/pycocotools only; this module adapts predictors to
it and runs all models and IoU bins image-major, so each image is loaded and encoded once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from ..modeling.sam import Sam
from ..utils.batching import bucket
from ..utils.progress import Progress
from . import coco as coco_lib
from .interface import Predictor, PromptBatch, Sample
from .predictors import SamEvalPredictor, as_predictors, encoder_groups
from .specs import CocoSpec, ModelSpec


class _LastImageEmbeddings:
    """The latest image's embedding per encoder group: the COCO loop shows each image to every
    model and IoU bin in turn, so models sharing an encoder encode it once."""

    def __init__(self):
        self.key: bytes | None = None
        self.embeddings: dict[int, Any] = {}

    def get(self, image: np.ndarray, group: int, predictor: Predictor):
        key = hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=16).digest()
        key += repr(image.shape).encode()
        if key != self.key:
            self.key, self.embeddings = key, {}
        if group not in self.embeddings:
            self.embeddings[group] = predictor.embed([image])[0]
        return self.embeddings[group]


def coco_predict_fn(
    predictor: Predictor, cache: _LastImageEmbeddings | None = None, group: int = 0
) -> coco_lib.PredictFn:
    """`coco.evaluate_coco`'s predict_fn: all boxes of an image in one call, score = predicted IoU."""

    def predict(image: np.ndarray, boxes: np.ndarray):
        if cache is None:
            embedding = predictor.embed([image])[0]
        else:
            embedding = cache.get(image, group, predictor)
        prompts = PromptBatch.from_boxes(boxes)
        sample = Sample(image, None, "")
        if isinstance(predictor, SamEvalPredictor):
            # Bucketed prompt counts: instance counts vary, recompiling for each would dominate.
            prediction = predictor.predict(sample, embedding, prompts, rows=bucket(len(boxes)))
        else:
            prediction = predictor.predict(sample, embedding, prompts)
        return prediction.masks, prediction.iou_predictions

    return predict


def bin_name(iou_bin: Sequence[float]) -> str:
    return f"{iou_bin[0]:g}-{iou_bin[1]:g}"


def evaluate_coco_models(
    models,
    coco_sets,
    seed: int = 0,
    *,
    mesh: jax.sharding.Mesh | None = None,
    progress: bool = True,
) -> dict:
    """Noisy-box mask mAP: `{set: {model: {"0.5-0.6": {"segm_mAP", "segm_mAP50",
    "num_instances", "iou_bin"}}}}` (0-100). coco_sets: {name: CocoSpec} or a list of them.

    Same numbers as `coco.evaluate_coco` per model and bin (each image's boxes depend only on
    seed and image id), but image-major: an image is loaded and encoded once for all models
    sharing an encoder and all bins, and scored per (model, bin) at the end.
    """
    predictors = models if _all_predictors(models) else as_predictors(models, mesh=mesh)
    group_of = {name: i for i, group in enumerate(encoder_groups(predictors)) for name in group}
    items = (
        list(coco_sets.items())
        if isinstance(coco_sets, Mapping)
        else [(spec.name, spec) for spec in coco_sets]
    )
    results: dict = {}
    for set_name, spec in items:
        spec.check_paths(set_name)
        results[set_name] = _evaluate_coco_set(predictors, group_of, spec, set_name, seed, progress)
    return results


def _evaluate_coco_set(
    predictors: Mapping[str, Predictor],
    group_of: Mapping[str, int],
    spec: CocoSpec,
    set_name: str,
    seed: int,
    progress: bool,
) -> dict:
    coco_gt = coco_lib.load_coco(spec.annotation_file)
    image_ids = sorted(coco_gt.getImgIds())
    if spec.max_images is not None:
        image_ids = image_ids[: spec.max_images]
    bins = [tuple(float(v) for v in b) for b in spec.iou_bins]
    cache = _LastImageEmbeddings()
    predict_fns = {
        name: coco_predict_fn(p, cache, group_of[name]) for name, p in predictors.items()
    }
    detections = {(m, b): [] for m in predictors for b in bins}
    instances = dict.fromkeys(detections, 0)
    bar = Progress(len(image_ids), f"coco {set_name}", enabled=progress)
    for done, image_id in enumerate(image_ids, start=1):
        for model_name in predictors:
            for iou_bin in bins:
                found, count = coco_lib.detections_for_coco(
                    coco_gt, spec.image_dir, predict_fns[model_name], iou_bin, seed, [image_id]
                )
                detections[(model_name, iou_bin)].extend(found)
                instances[(model_name, iou_bin)] += count
        bar.update(done)
    results: dict = {}
    for model_name in predictors:
        results[model_name] = {}
        for iou_bin in bins:
            stats = coco_lib.coco_segm_stats(coco_gt, detections[(model_name, iou_bin)], image_ids)
            results[model_name][bin_name(iou_bin)] = {
                "segm_mAP": float(stats[0] * 100),
                "segm_mAP50": float(stats[1] * 100),
                "num_instances": instances[(model_name, iou_bin)],
                "iou_bin": list(iou_bin),
            }
    return results


def _all_predictors(models) -> bool:
    return isinstance(models, Mapping) and all(
        isinstance(m, Predictor) and not isinstance(m, (Sam, ModelSpec)) for m in models.values()
    )
