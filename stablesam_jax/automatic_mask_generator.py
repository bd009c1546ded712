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
`python -m stablesam_jax.commands.amg --help` compares generators on synthetic scenes and times
the generator (`stablesam_jax.tools.amg_report`).
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
from .predictor import SamPredictor
from .utils import amg
from .utils.batching import pad_rows, round_up
from .utils.validation import validate_image

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
    point i // M (the official flatten order; M = 3 masks per point, or 1 without multimask
    or with HQ-SAM)."""
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
    # Masks per point from the decoder: 3 or 1 for SAM, always 1 for HQ-SAM.
    valid = jnp.repeat(point_valid.reshape(-1), iou.shape[0] // point_valid.size)
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
        pad_rows(np.asarray(boxes, np.float32), size, fill=0),
        pad_rows(np.asarray(scores, np.float32), size, fill=0),
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
        self.point_grids = amg.layer_point_grids(
            points_per_side, point_grids, crop_n_layers, crop_n_points_downscale_factor
        )
        if output_mode not in OUTPUT_MODES:
            raise ValueError(f"output_mode must be one of {OUTPUT_MODES}, got {output_mode!r}")
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
        image = validate_image(image, self.model.img_size)
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
        padded = pad_rows(in_points.astype(np.float32), n_chunks * chunk, fill=0)
        point_valid = np.arange(n_chunks * chunk) < len(points)
        hb = round_up(crop_h, self.size_multiple)
        wb = round_up(crop_w, self.size_multiple)
        low_res_size = 4 * self.model.config.image_embedding_size
        ry, rx = amg.upscale_matrices(
            low_res_size, self.model.img_size, embedding.input_size, (crop_h, crop_w)
        )
        ry, rx = pad_rows(ry, hb, fill=0), pad_rows(rx, wb, fill=0)
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
                pad_rows(index, self.final_chunk, fill=0),
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
            "points": np.repeat(points, len(out["iou_preds"]) // len(point_valid), axis=0)[kept]
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
