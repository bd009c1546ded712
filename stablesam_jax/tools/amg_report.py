"""The automatic mask generator measured: its speed on one image, and SAM vs Stable-SAM under its
single-click grid prompts on generated scenes (`python -m stablesam_jax.commands.amg`)."""

from __future__ import annotations

import resource
import time

import jax
import numpy as np

from ..automatic_mask_generator import SamAutomaticMaskGenerator
from ..data.scenes import generate_scene
from ..evaluation import metrics
from ..modeling.sam import Sam
from ..predictor import SamPredictor


def peak_memory() -> dict:
    """The device's peak memory where the backend reports it, else the process's peak RSS."""
    device = jax.devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "peak_bytes_in_use" in stats:
        return {"device_peak_gb": round(stats["peak_bytes_in_use"] / 2**30, 3)}
    return {"host_max_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}


def benchmark(model: Sam, image: np.ndarray, repeats: int = 3, **generator_kwargs) -> dict:
    """Times `generate` on one image: first call (with compilation) and the median of repeats,
    with the encoder's share measured separately."""
    gen = SamAutomaticMaskGenerator(model, **generator_kwargs)
    t0 = time.perf_counter()
    records = gen.generate(image)
    first = time.perf_counter() - t0
    times, encoder_times = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        records = gen.generate(image)
        times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        jax.block_until_ready(gen.predictor.encode_images([image])[0].features)
        encoder_times.append(time.perf_counter() - t0)
    return {
        "first_call_s": round(first, 3),
        "generate_s_median": round(float(np.median(times)), 3),
        "encoder_s_median": round(float(np.median(encoder_times)), 3),
        "num_masks": len(records),
        **peak_memory(),
    }


def _click_consistency(
    predictor: SamPredictor, gt: np.ndarray, grid: np.ndarray, multimask_output: bool = True
) -> dict | None:
    """Every grid click inside one object, each answered by its best-scored mask (or its single
    mask without multimask output): how much the answers agree (the paper's mSF: mean IoU of each
    mask with their union) and how close they are to the object."""
    h, w = gt.shape
    pts = grid * np.array([w, h])
    inside = gt[np.clip(pts[:, 1].astype(int), 0, h - 1), np.clip(pts[:, 0].astype(int), 0, w - 1)]
    pts = pts[inside]
    if len(pts) < 2:
        return None
    masks, iou, _ = predictor.predict_batch(
        pts[:, None, :], np.ones((len(pts), 1), np.int32), multimask_output=multimask_output
    )
    best = masks[np.arange(len(pts)), iou.argmax(1)]
    return {
        "clicks": len(pts),
        "msf": metrics.stability_score(best),
        "mean_iou_to_object": float(np.mean(metrics.mask_iou_batch(best, gt))),
    }


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _model_report(gen: SamAutomaticMaskGenerator, scenes: list[dict]) -> dict:
    grid = gen.point_grids[0]
    counts, ious, stabilities, best_ious, consistency = [], [], [], [], []
    for scene in scenes:
        records = gen.generate(scene["image"])
        counts.append(len(records))
        ious += [r["predicted_iou"] for r in records]
        stabilities += [r["stability_score"] for r in records]
        segs = [r["segmentation"] for r in records]
        gen.predictor.set_image(scene["image"])
        for gt in scene["masks"]:
            best_ious.append(max((metrics.mask_iou(s, gt) for s in segs), default=0.0))
            c = _click_consistency(gen.predictor, gt, grid, gen.multimask_output)
            if c is not None:
                consistency.append(c)
    return {
        "masks_per_image": float(np.mean(counts)),
        "mean_predicted_iou": _mean(ious),
        "mean_stability_score": _mean(stabilities),
        "instances": len(best_ious),
        "instance_recall_at_0.5": float(np.mean(np.array(best_ious) >= 0.5)),
        "mean_best_instance_iou": float(np.mean(best_ious)),
        "click_msf": _mean([c["msf"] for c in consistency]),
        "click_mean_iou_to_object": _mean([c["mean_iou_to_object"] for c in consistency]),
        "objects_with_2plus_clicks": len(consistency),
    }


def robustness_report(
    models: dict[str, Sam],
    num_scenes: int = 4,
    scene_size: int = 256,
    seed: int = 0,
    **generator_kwargs,
) -> dict:
    """SAM vs Stable-SAM (or any named models) under the single-click grid prompts of automatic
    mask generation, on synthetic scenes with known instances: how many masks, their scores, how
    well they recover the instances, and how consistent the clicks inside one object are."""
    scenes = [generate_scene((seed, i), size=scene_size) for i in range(num_scenes)]
    return {
        name: _model_report(SamAutomaticMaskGenerator(model, **generator_kwargs), scenes)
        for name, model in models.items()
    }
