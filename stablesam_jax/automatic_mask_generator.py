"""`SamAutomaticMaskGenerator`: the official generator's parameters, records and order of
operations, with the grid, the filters and the NMS on the device in fixed shapes.

Per crop, one compiled program runs the whole point grid through the prompt encoder and mask
decoder in chunks of `points_per_batch` points (`jax.lax.map`), upsamples each chunk's 3 masks per
point to the crop's size, computes predicted-IoU / stability / crop-edge validity, mask boxes, and
finally a greedy box NMS over all 3 x points candidates. Nothing is indexed by a data-dependent
count: filters become a validity mask, and the NMS loop visits valid candidates only. The crop
size enters as data (interpolation matrices zero-padded to a multiple of `size_multiple`), so
images in the same size bucket share one compiled program; only the surviving masks are
upsampled again and copied to the host.

Works on any `Sam` (SAM or Stable-SAM): it calls the model's own prompt encoder and decoder.
`python -m stablesam_jax.automatic_mask_generator --help` compares generators on synthetic
scenes and times the generator.
"""

from __future__ import annotations

import collections
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .modeling.sam import Sam
from .predictor import SamPredictor, validate_image
from .utils import amg

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")
# How many times each compiled program has been traced (a trace is a compile): the tests use it
# to check that new images and new sizes inside a bucket reuse the programs.
TRACE_COUNTS: collections.Counter = collections.Counter()
_HIGHEST = jax.lax.Precision.HIGHEST


def _upscale(low_res: jax.Array, ry: jax.Array, rx: jax.Array) -> jax.Array:
    """[..., L, L] low-res logits -> [..., Hb, Wb] via ry [Hb, L] and rx [Wb, L] (fp32)."""
    low_res = low_res.astype(jnp.float32)
    if rx.shape[0] <= ry.shape[0]:  # contract the axis whose output is smaller first
        x = jnp.einsum("...lk,wk->...lw", low_res, rx, precision=_HIGHEST)
        return jnp.einsum("hl,...lw->...hw", ry, x, precision=_HIGHEST)
    x = jnp.einsum("hl,...lk->...hk", ry, low_res, precision=_HIGHEST)
    return jnp.einsum("...hk,wk->...hw", x, rx, precision=_HIGHEST)


def _region(ry, rx, crop_hw):
    rows = jnp.arange(ry.shape[0]) < crop_hw[0]
    cols = jnp.arange(rx.shape[0]) < crop_hw[1]
    return rows[:, None] & cols[None, :]


@functools.partial(jax.jit, static_argnums=(0, 11))
def _grid_candidates(
    graphdef,
    state,
    features,
    points,
    point_valid,
    ry,
    rx,
    crop_hw,
    crop_box,
    orig_box,
    settings,
    multimask_output=True,
):
    """points [chunks, chunk, 2] in the model's input frame -> every candidate's low-res logits,
    predicted IoU, stability, box (crop frame) and NMS keep flag; candidate i is mask i % M of
    point i // M (the official flatten order; M = 3 masks per point, or 1 without multimask)."""
    TRACE_COUNTS["grid_candidates"] += 1
    model = nnx.merge(graphdef, state)
    region = _region(ry, rx, crop_hw)
    threshold = settings["mask_threshold"]

    def chunk(chunk_points):
        labels = jnp.ones((chunk_points.shape[0], 1), jnp.int32)
        low_res, iou, _ = model.decode(
            features[None], chunk_points[:, None, :], labels, multimask_output=multimask_output
        )
        logits = jnp.where(region, _upscale(low_res, ry, rx), -jnp.inf)
        stability = amg.stability_scores(logits, threshold, settings["stability_score_offset"])
        boxes = amg.masks_to_boxes(logits > threshold)
        return low_res, iou, stability, boxes

    low_res, iou, stability, boxes = jax.lax.map(chunk, points)
    low_res = low_res.reshape(-1, *low_res.shape[-2:])
    iou, stability, boxes = iou.reshape(-1), stability.reshape(-1), boxes.reshape(-1, 4)
    valid = jnp.repeat(point_valid.reshape(-1), 3 if multimask_output else 1)
    # The official skips a filter whose threshold is <= 0, which also lets NaN scores through.
    valid &= (iou > settings["pred_iou_thresh"]) | ~settings["filter_iou"]
    valid &= (stability >= settings["stability_score_thresh"]) | ~settings["filter_stability"]
    valid &= ~amg.is_box_near_crop_edge(boxes, crop_box, orig_box)
    keep, order = amg.greedy_nms(boxes, iou, valid, settings["box_nms_thresh"])
    return {
        "low_res": low_res,
        "iou_preds": iou,
        "stability_score": stability,
        "boxes": boxes,
        "keep": keep,
        "order": order,
    }


@jax.jit
def _final_masks(low_res, index, ry, rx, crop_hw, mask_threshold):
    """Binary masks [K, Hb, Wb] and their areas for the candidates `index` [K]."""
    TRACE_COUNTS["final_masks"] += 1
    masks = (_upscale(low_res[index], ry, rx) > mask_threshold) & _region(ry, rx, crop_hw)
    return masks, jnp.sum(masks, axis=(-2, -1), dtype=jnp.int32)


@jax.jit
def _nms(boxes, scores, valid, iou_threshold):
    TRACE_COUNTS["nms"] += 1
    return amg.greedy_nms(boxes, scores, valid, iou_threshold)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS on the device for a host list of boxes; returns kept indices by descending
    score. Pads to a power of two (>= 64) so few sizes ever compile."""
    n = len(boxes)
    if n == 0:
        return np.zeros((0,), np.int64)
    size = max(64, 1 << (n - 1).bit_length())
    keep, order = _nms(
        amg.pad_rows(np.asarray(boxes, np.float32), size),
        amg.pad_rows(np.asarray(scores, np.float32), size),
        np.arange(size) < n,
        np.float32(iou_threshold),
    )
    keep, order = np.asarray(keep), np.asarray(order)
    return order[keep[order]]


class SamAutomaticMaskGenerator:
    """Masks for a whole image from a grid of single-point prompts (the official API).

    Arguments are the official ones (see `segment_anything.SamAutomaticMaskGenerator`); extra:
      size_multiple: crop heights and widths are padded up to a multiple of this on the device,
        so every image whose size falls in the same bucket reuses the compiled programs.
      final_chunk: surviving masks are upsampled and copied to the host this many at a time.
      multimask_output: False takes one mask per point (the decoder's single-mask token), as
        SAM 2's generator allows; for models trained only on that output, such as the demo SAM.
    `min_mask_region_area` cleanup runs on the host with scipy (no OpenCV needed).
    """

    def __init__(
        self,
        model: Sam,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: list[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
        *,
        size_multiple: int = 64,
        final_chunk: int = 64,
        multimask_output: bool = True,
    ) -> None:
        if (points_per_side is None) == (point_grids is None):
            raise ValueError("give exactly one of points_per_side and point_grids")
        if crop_n_layers < 0:
            raise ValueError(f"crop_n_layers must be >= 0, got {crop_n_layers}")
        if points_per_side is not None:
            if points_per_side < 1:
                raise ValueError(f"points_per_side must be >= 1, got {points_per_side}")
            if crop_n_points_downscale_factor < 1:
                raise ValueError("crop_n_points_downscale_factor must be >= 1")
            self.point_grids = amg.build_all_layer_point_grids(
                points_per_side, crop_n_layers, crop_n_points_downscale_factor
            )
            if any(len(g) == 0 for g in self.point_grids):
                raise ValueError(
                    f"points_per_side={points_per_side} downscaled by "
                    f"{crop_n_points_downscale_factor} per layer leaves no points in layer "
                    f"{crop_n_layers}: use fewer crop layers or a smaller downscale factor"
                )
        else:
            self.point_grids = [np.asarray(g, np.float64) for g in point_grids]
            if len(self.point_grids) < crop_n_layers + 1:
                raise ValueError(
                    f"point_grids has {len(self.point_grids)} grids; crop_n_layers="
                    f"{crop_n_layers} needs one per layer ({crop_n_layers + 1})"
                )
            for i, g in enumerate(self.point_grids):
                if g.ndim != 2 or g.shape[1] != 2 or len(g) == 0:
                    raise ValueError(f"point_grids[{i}] must be [N, 2] (N >= 1), got {g.shape}")
                if not np.all((g >= 0) & (g <= 1)):
                    raise ValueError(f"point_grids[{i}] must be normalized to [0, 1]")
        if output_mode not in OUTPUT_MODES:
            raise ValueError(f"output_mode must be one of {OUTPUT_MODES}, got {output_mode!r}")
        if output_mode == "coco_rle":
            from pycocotools import mask as _  # noqa: F401 - fail now, not after the model ran
        if points_per_batch < 1 or final_chunk < 1 or size_multiple < 1:
            raise ValueError("points_per_batch, final_chunk and size_multiple must be >= 1")
        self.predictor = SamPredictor(model)
        self.points_per_batch = points_per_batch
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.crop_n_points_downscale_factor = crop_n_points_downscale_factor
        self.min_mask_region_area = min_mask_region_area
        self.output_mode = output_mode
        self.size_multiple = size_multiple
        self.final_chunk = final_chunk
        self.multimask_output = bool(multimask_output)
        self.update_weights()

    @property
    def model(self) -> Sam:
        return self.predictor.model

    def update_weights(self) -> None:
        """Call after changing the model's weights (they are captured, as by the predictor)."""
        self.predictor.update_weights()
        self._graphdef, self._state = nnx.split(self.model)

    def _settings(self) -> dict:
        return {
            "mask_threshold": np.float32(self.model.mask_threshold),
            "pred_iou_thresh": np.float32(self.pred_iou_thresh),
            "filter_iou": np.bool_(self.pred_iou_thresh > 0.0),
            "stability_score_thresh": np.float32(self.stability_score_thresh),
            "filter_stability": np.bool_(self.stability_score_thresh > 0.0),
            "stability_score_offset": np.float32(self.stability_score_offset),
            "box_nms_thresh": np.float32(self.box_nms_thresh),
        }

    # ----------------------------------------------------------------------------- generate

    def generate(self, image: np.ndarray) -> list[dict[str, Any]]:
        """Masks for an HxWx3 uint8 image: a list of records with `segmentation`, `area`, `bbox`
        (XYWH), `predicted_iou`, `point_coords`, `stability_score` and `crop_box` (XYWH)."""
        image = validate_image(image)
        data = self._generate_masks(image)
        if self.min_mask_region_area > 0:
            data = self.postprocess_small_regions(
                data, self.min_mask_region_area, max(self.box_nms_thresh, self.crop_nms_thresh)
            )
        records = []
        for i, mask in enumerate(data["masks"]):
            if self.output_mode == "binary_mask":
                segmentation = mask
            else:
                segmentation = amg.mask_to_rle(mask)
                if self.output_mode == "coco_rle":
                    segmentation = amg.coco_encode_rle(segmentation)
            records.append(
                {
                    "segmentation": segmentation,
                    "area": int(data["areas"][i]),
                    "bbox": amg.box_xyxy_to_xywh(data["boxes"][i]),
                    "predicted_iou": float(data["iou_preds"][i]),
                    "point_coords": [data["points"][i].tolist()],
                    "stability_score": float(data["stability_score"][i]),
                    "crop_box": amg.box_xyxy_to_xywh(data["crop_boxes"][i]),
                }
            )
        return records

    def _generate_masks(self, image: np.ndarray) -> dict[str, Any]:
        orig_size = image.shape[:2]
        crop_boxes, layer_idxs = amg.generate_crop_boxes(
            orig_size, self.crop_n_layers, self.crop_overlap_ratio
        )
        parts = [
            self._process_crop(image, crop_box, layer_idx, orig_size)
            for crop_box, layer_idx in zip(crop_boxes, layer_idxs)
        ]
        data = _concat(parts)
        if len(crop_boxes) > 1 and len(data["boxes"]):
            # Duplicates between crops: prefer masks from smaller crops.
            crop = data["crop_boxes"].astype(np.float32)
            scores = 1.0 / ((crop[:, 2] - crop[:, 0]) * (crop[:, 3] - crop[:, 1]))
            keep = nms(data["boxes"], scores, self.crop_nms_thresh)
            data = _take(data, keep)
        return data

    def _process_crop(
        self,
        image: np.ndarray,
        crop_box: list[int],
        crop_layer_idx: int,
        orig_size: tuple[int, int],
    ) -> dict[str, Any]:
        x0, y0, x1, y1 = crop_box
        cropped = image[y0:y1, x0:x1, :]
        crop_h, crop_w = cropped.shape[:2]
        embedding = self.predictor.encode_images([cropped])[0]
        points = self.point_grids[crop_layer_idx] * np.array([[crop_w, crop_h]], np.float64)
        in_points = self.predictor.transform.apply_coords(points, (crop_h, crop_w))

        chunk = self.points_per_batch
        n_chunks = -(-len(points) // chunk)
        padded = amg.pad_rows(in_points.astype(np.float32), n_chunks * chunk)
        point_valid = np.arange(n_chunks * chunk) < len(points)
        hb = amg.round_up(crop_h, self.size_multiple)
        wb = amg.round_up(crop_w, self.size_multiple)
        low_res_size = 4 * self.model.config.image_embedding_size
        ry, rx = amg.upscale_matrices(
            low_res_size, self.model.img_size, embedding.input_size, (crop_h, crop_w)
        )
        ry, rx = amg.pad_rows(ry, hb), amg.pad_rows(rx, wb)
        crop_hw = np.array([crop_h, crop_w], np.int32)
        out = _grid_candidates(
            self._graphdef,
            self._state,
            embedding.features,
            padded.reshape(n_chunks, chunk, 2),
            point_valid,
            ry,
            rx,
            crop_hw,
            np.array(crop_box, np.int32),
            np.array([0, 0, orig_size[1], orig_size[0]], np.int32),
            self._settings(),
            self.multimask_output,
        )
        keep, order = np.asarray(out["keep"]), np.asarray(out["order"])
        kept = order[keep[order]]  # NMS order: descending predicted IoU

        masks, areas = [], []
        for start in range(0, len(kept), self.final_chunk):
            index = kept[start : start + self.final_chunk]
            m, a = _final_masks(
                out["low_res"],
                amg.pad_rows(index, self.final_chunk),
                ry,
                rx,
                crop_hw,
                np.float32(self.model.mask_threshold),
            )
            masks.append(np.asarray(m)[: len(index), :crop_h, :crop_w])
            areas.append(np.asarray(a)[: len(index)])
        h, w = orig_size
        full = np.zeros((len(kept), h, w), bool)
        if masks:
            full[:, y0:y1, x0:x1] = np.concatenate(masks)
        offset = np.array([x0, y0, x0, y0])
        return {
            "masks": full,
            "areas": np.concatenate(areas) if areas else np.zeros((0,), np.int64),
            "boxes": np.asarray(out["boxes"])[kept].astype(np.int64) + offset,
            "iou_preds": np.asarray(out["iou_preds"])[kept],
            "stability_score": np.asarray(out["stability_score"])[kept],
            "points": np.repeat(points, 3 if self.multimask_output else 1, axis=0)[kept]
            + offset[:2],
            "crop_boxes": np.tile(np.array(crop_box, np.int64), (len(kept), 1)),
        }

    @staticmethod
    def postprocess_small_regions(data: dict, min_area: int, nms_thresh: float) -> dict:
        """Fills small holes and removes small islands (scipy, 8-connected), then NMS again
        preferring masks that did not change (the official step, on host arrays)."""
        if len(data["masks"]) == 0:
            return data
        new_masks, scores = [], []
        for mask in data["masks"]:
            mask, changed_holes = amg.remove_small_regions(mask, min_area, "holes")
            mask, changed_islands = amg.remove_small_regions(mask, min_area, "islands")
            new_masks.append(mask)
            scores.append(float(not (changed_holes or changed_islands)))
        boxes = amg.masks_to_boxes_np(np.stack(new_masks))
        keep = nms(boxes, np.asarray(scores), nms_thresh)
        data = {k: np.array(v, copy=True) for k, v in data.items()}
        for i in keep:
            if scores[i] == 0.0:
                data["masks"][i] = new_masks[i]
                data["boxes"][i] = boxes[i]
                data["areas"][i] = int(new_masks[i].sum())
        return _take(data, keep)


def _concat(parts: list[dict]) -> dict:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _take(data: dict, index: np.ndarray) -> dict:
    return {k: v[index] for k, v in data.items()}


# ----------------------------------------------------------------------------- reports


def _peak_memory() -> dict:
    device = jax.devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "peak_bytes_in_use" in stats:
        return {"device_peak_gb": round(stats["peak_bytes_in_use"] / 2**30, 3)}
    import resource

    return {"host_max_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}


def benchmark(model: Sam, image: np.ndarray, repeats: int = 3, **generator_kwargs) -> dict:
    """Times `generate` on one image: first call (with compilation) and the median of repeats,
    with the encoder's share measured separately."""
    import time

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
        **_peak_memory(),
    }


def _click_consistency(
    predictor: SamPredictor, gt: np.ndarray, grid: np.ndarray, multimask_output: bool = True
) -> dict | None:
    """Every grid click inside one object, each answered by its best-scored mask (or its single
    mask without multimask output): how much the answers agree (the paper's mSF: mean IoU of each
    mask with their union) and how close they are to the object."""
    from .evaluation import metrics

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
    from .data.scenes import generate_scene
    from .evaluation import metrics

    scenes = [generate_scene((seed, i), size=scene_size) for i in range(num_scenes)]
    report = {}
    for name, model in models.items():
        gen = SamAutomaticMaskGenerator(model, **generator_kwargs)
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
        report[name] = {
            "masks_per_image": float(np.mean(counts)),
            "mean_predicted_iou": float(np.mean(ious)) if ious else None,
            "mean_stability_score": float(np.mean(stabilities)) if stabilities else None,
            "instances": len(best_ious),
            "instance_recall_at_0.5": float(np.mean(np.array(best_ious) >= 0.5)),
            "mean_best_instance_iou": float(np.mean(best_ious)),
            "click_msf": float(np.mean([c["msf"] for c in consistency])) if consistency else None,
            "click_mean_iou_to_object": float(
                np.mean([c["mean_iou_to_object"] for c in consistency])
            )
            if consistency
            else None,
            "objects_with_2plus_clicks": len(consistency),
        }
    return report


def main(argv=None) -> int:
    import argparse
    import json
    import time

    parser = argparse.ArgumentParser(prog="python -m stablesam_jax.automatic_mask_generator")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("bench", "compare"):
        p = sub.add_parser(name)
        p.add_argument("--model-type", default="vit_demo")
        p.add_argument("--checkpoint", help="converted SAM checkpoint (random weights if absent)")
        p.add_argument("--points-per-side", type=int, default=32)
        p.add_argument("--points-per-batch", type=int, default=64)
        p.add_argument("--pred-iou-thresh", type=float, default=0.88)
        p.add_argument("--stability-score-thresh", type=float, default=0.95)
        p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
        p.add_argument("--compilation-cache", help="persistent compilation cache directory")
        p.add_argument(
            "--single-mask",
            action="store_true",
            help="one mask per point (multimask_output=False), e.g. for the demo SAM, whose "
            "pretraining fits only the single-mask output",
        )
    bench = sub.choices["bench"]
    bench.add_argument("--image-size", type=int, default=None, help="long side (default img_size)")
    bench.add_argument("--repeats", type=int, default=3)
    compare = sub.choices["compare"]
    compare.add_argument("--plugins", help="Stable-SAM plugin checkpoint (fresh plugins if absent)")
    compare.add_argument("--num-scenes", type=int, default=4)
    compare.add_argument("--scene-size", type=int, default=256)
    compare.add_argument(
        "--scene-seed",
        type=int,
        default=0,
        help="generated scenes (the demo trains on seeds 1, 2 and 5 and evaluates on 3)",
    )
    args = parser.parse_args(argv)

    if args.compilation_cache:
        from .utils.compilation_cache import enable_compilation_cache

        enable_compilation_cache(args.compilation_cache)
    from .builder import build_sam, build_stable_sam

    dtype = None if args.dtype == "float32" else jnp.bfloat16
    kwargs = dict(
        points_per_side=args.points_per_side,
        points_per_batch=args.points_per_batch,
        pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_score_thresh,
        multimask_output=not args.single_mask,
    )
    info = {
        "command": args.command,
        "model_type": args.model_type,
        "random_weights": args.checkpoint is None,
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0]),
        "dtype": args.dtype,
        **kwargs,
    }
    t0 = time.perf_counter()
    sam = build_sam(args.model_type, args.checkpoint, dtype=dtype)
    info["build_s"] = round(time.perf_counter() - t0, 2)
    if args.command == "bench":
        from .data.scenes import generate_scene

        size = args.image_size or sam.img_size
        image = generate_scene(0, size=size)["image"][: size * 3 // 4]  # a 4:3 synthetic scene
        info["image_shape"] = list(image.shape)
        info.update(benchmark(sam, image, repeats=args.repeats, **kwargs))
    else:
        stable = build_stable_sam(args.model_type, args.checkpoint, args.plugins, dtype=dtype)
        info["plugins"] = args.plugins or "fresh (identity at initialization)"
        info["num_scenes"], info["scene_size"] = args.num_scenes, args.scene_size
        info["scene_seed"] = args.scene_seed
        info["report"] = robustness_report(
            {"sam": sam, "stable_sam": stable},
            num_scenes=args.num_scenes,
            scene_size=args.scene_size,
            seed=args.scene_seed,
            **kwargs,
        )
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
