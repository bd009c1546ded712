"""COCO-format evaluation with noisy box prompts (the paper's Table 3 protocol).

Every non-crowd instance with a non-empty mask is prompted with a noisy box whose IoU with its GT
box lies in `iou_bin`; the predicted masks are scored by pycocotools' COCOeval ("segm") with
score = the model's predicted IoU. The model is injected as `predict_fn`, so this module stays
numpy/pycocotools only and is testable without weights.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import sys
from collections.abc import Callable, Sequence

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ..data.prompts import mask_to_box, noisy_box
from ..utils.io import load_image

PredictFn = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def load_coco(annotation_file: str, verbose: bool = False) -> COCO:
    """pycocotools' COCO index, its loading chatter silenced unless `verbose`."""
    with _quiet(not verbose):
        return COCO(annotation_file)


@contextlib.contextmanager
def _quiet(enabled: bool):
    # pycocotools prints progress to stdout unconditionally.
    if not enabled:
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def prompted_instances(coco_gt: COCO, image_id: int) -> list[tuple[dict, np.ndarray]]:
    """(annotation, mask) of the instances that get a prompt: non-crowd, non-empty mask.

    Order is pycocotools' `getAnnIds` order, so a predictor can rely on it.
    """
    instances = []
    for ann in coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=[image_id])):
        if ann.get("iscrowd", 0):
            continue
        mask = coco_gt.annToMask(ann).astype(bool)
        if mask.any():
            instances.append((ann, mask))
    return instances


def encode_mask(mask: np.ndarray) -> dict:
    """COCO RLE of a boolean mask, `counts` as str so the detections are JSON-serialisable."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def detections_for_coco(
    coco_gt: COCO,
    image_dir: str,
    predict_fn: PredictFn,
    iou_bin: Sequence[float] = (0.5, 0.6),
    seed: int = 0,
    image_ids: Sequence[int] | None = None,
    progress: bool = False,
) -> tuple[list[dict], int]:
    """Run `predict_fn` on every image once with all its noisy boxes -> (detections, num_instances).

    `predict_fn(image uint8 [H, W, 3], boxes float32 [N, 4] XYXY) -> (masks bool [N, H, W],
    scores [N])`, boxes in `prompted_instances` order. Each image's boxes come from
    `default_rng([seed, image_id])`, so they do not depend on which other images are evaluated.
    """
    image_ids = sorted(coco_gt.getImgIds()) if image_ids is None else list(image_ids)
    detections = []
    num_instances = 0
    for index, image_id in enumerate(image_ids):
        info = coco_gt.loadImgs([image_id])[0]
        path = os.path.join(image_dir, info["file_name"])
        image = load_image(path)
        if image.shape[:2] != (info["height"], info["width"]):
            raise ValueError(
                f"image {path!r} is {image.shape[1]}x{image.shape[0]} (WxH) but the annotations "
                f"say {info['width']}x{info['height']}"
            )
        instances = prompted_instances(coco_gt, image_id)
        if not instances:
            continue
        rng = np.random.default_rng([seed, image_id])
        hw = image.shape[:2]
        boxes = np.stack(
            [noisy_box(mask_to_box(m), rng, hw, iou_range=iou_bin) for _, m in instances]
        )
        masks, scores = predict_fn(image, boxes.astype(np.float32))
        masks = np.asarray(masks, dtype=bool)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        if masks.shape != (len(instances), *hw) or scores.shape != (len(instances),):
            raise ValueError(
                f"predict_fn returned masks {masks.shape} and scores {scores.shape} for "
                f"{len(instances)} boxes on a {hw} image; expected ({len(instances)}, H, W), (N,)"
            )
        for (ann, _), mask, score in zip(instances, masks, scores):
            detections.append(
                {
                    "image_id": image_id,
                    "category_id": ann["category_id"],
                    "segmentation": encode_mask(mask),
                    "score": float(score),
                }
            )
        num_instances += len(instances)
        if progress and ((index + 1) % 50 == 0 or index + 1 == len(image_ids)):
            print(f"coco eval: {index + 1}/{len(image_ids)} images", file=sys.stderr, flush=True)
    return detections, num_instances


def coco_segm_stats(
    coco_gt: COCO, detections: list[dict], image_ids: Sequence[int], verbose: bool = False
) -> np.ndarray:
    """COCOeval("segm") summary stats (12 values, 0-1) over `image_ids`."""
    if not detections:
        raise ValueError("no detections to evaluate: no image had a prompted instance")
    # loadRes adds fields to the dicts it gets; keep the caller's detections as they were.
    with _quiet(not verbose):
        coco_dt = coco_gt.loadRes(copy.deepcopy(detections))
        evaluator = COCOeval(coco_gt, coco_dt, "segm")
        evaluator.params.imgIds = list(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return np.asarray(evaluator.stats)


def evaluate_coco(
    annotation_file: str,
    image_dir: str,
    predict_fn: PredictFn,
    iou_bin: Sequence[float] = (0.5, 0.6),
    seed: int = 0,
    max_images: int | None = None,
    progress: bool = True,
) -> dict:
    """Noisy-box mask mAP on a COCO-format set: {"segm_mAP", "segm_mAP50" (0-100),
    "num_instances", "iou_bin"}. `max_images` keeps the first images by id (and scores only them).
    """
    coco_gt = load_coco(annotation_file, verbose=progress)
    image_ids = sorted(coco_gt.getImgIds())
    if max_images is not None:
        image_ids = image_ids[:max_images]
    detections, num_instances = detections_for_coco(
        coco_gt, image_dir, predict_fn, iou_bin, seed, image_ids, progress
    )
    stats = coco_segm_stats(coco_gt, detections, image_ids, verbose=progress)
    return {
        "segm_mAP": float(stats[0] * 100),
        "segm_mAP50": float(stats[1] * 100),
        "num_instances": num_instances,
        "iou_bin": [float(v) for v in iou_bin],
    }
