"""The official batched forward, `Sam.__call__(batched_input, multimask_output)`, compiled.

Records are the official ones: "image" (3xHxW as the official docstring says, or HxWx3; torch,
numpy or JAX; any dtype, already resized so its long side is `img_size`), "original_size" (H, W)
and optional "point_coords" [B, N, 2], "point_labels" [B, N], "boxes" [B, 4] and "mask_inputs"
[B, 1, 256, 256], all in the model's input frame. All images go through the encoder in one call;
records whose prompts have the same kinds and point count share one decoder call (rows gathered
from their images' embeddings), through `Sam.decode`. Each step is a `jax.jit`: the encoder
compiles once per number of images, the decoder once per prompt signature and bucketed row count.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..utils import torch_compat
from ..utils.batching import bucket, pad_rows
from . import ops

_PROMPT_KEYS = ("point_coords", "point_labels", "boxes", "mask_inputs")


def postprocess_logits(
    masks: jax.Array, img_size: int, input_size: tuple[int, int], original_size: tuple[int, int]
) -> jax.Array:
    """[..., 256, 256] low-res logits -> [..., H, W] at the original size: upsample to the
    padded input, crop the padding, resize (torch bilinear, align_corners=False)."""
    masks = ops.resize_bilinear(masks, (img_size, img_size))
    masks = masks[..., : input_size[0], : input_size[1]]
    return ops.resize_bilinear(masks, (int(original_size[0]), int(original_size[1])))


@dataclasses.dataclass
class _Record:
    index: int
    image: Any  # as given
    channels_first: bool
    input_size: tuple[int, int]
    original_size: tuple[int, int]
    prompts: dict[str, np.ndarray]  # the given prompt keys, as numpy
    rows: int
    wants_torch: bool

    @property
    def signature(self) -> tuple:
        points = self.prompts.get("point_coords")
        return (
            None if points is None else points.shape[1],
            "boxes" in self.prompts,
            "mask_inputs" in self.prompts,
            self.index if not self.prompts else -1,  # a record without prompts decodes alone
        )


def _layout(shape: tuple[int, ...], index: int, img_size: int) -> tuple[bool, tuple[int, int]]:
    if len(shape) == 3 and shape[0] == 3:
        channels_first, size = True, shape[1:]
    elif len(shape) == 3 and shape[2] == 3:
        channels_first, size = False, shape[:2]
    else:
        raise ValueError(
            f"batched_input[{index}]['image'] has shape {tuple(shape)}; expected 3xHxW (the "
            "official layout) or HxWx3"
        )
    if max(size) > img_size:
        raise ValueError(
            f"batched_input[{index}]['image'] is {size[0]}x{size[1]}, larger than the model's "
            f"{img_size}x{img_size} input: resize it first with "
            f"ResizeLongestSide({img_size}).apply_image"
        )
    return channels_first, (int(size[0]), int(size[1]))


def _prompts(record: dict, index: int) -> tuple[dict[str, np.ndarray], int]:
    prompts = {k: torch_compat.to_numpy(record[k]) for k in _PROMPT_KEYS if k in record}
    if ("point_coords" in prompts) != ("point_labels" in prompts):
        raise ValueError(f"batched_input[{index}]: point_coords and point_labels come together")
    if "boxes" in prompts:
        prompts["boxes"] = prompts["boxes"].reshape(-1, 4)
    if "mask_inputs" in prompts:
        masks = prompts["mask_inputs"]
        prompts["mask_inputs"] = masks.reshape(-1, *masks.shape[-2:])
    want = {"point_coords": 3, "point_labels": 2, "boxes": 2, "mask_inputs": 3}
    bad = [f"{k} {v.shape}" for k, v in prompts.items() if v.ndim != want[k]]
    rows = {v.shape[0] for v in prompts.values()}
    if bad or len(rows) > 1:
        raise ValueError(
            f"batched_input[{index}]: prompts must be point_coords [B, N, 2], point_labels "
            f"[B, N], boxes [B, 4], mask_inputs [B, 1, 256, 256] with one B; got "
            + ", ".join(f"{k} {v.shape}" for k, v in prompts.items())
        )
    return prompts, rows.pop() if rows else 1


def parse_records(batched_input: list[dict[str, Any]], img_size: int) -> list[_Record]:
    if not isinstance(batched_input, (list, tuple)) or not batched_input:
        raise ValueError("batched_input must be a non-empty list of records (dicts)")
    records = []
    for i, record in enumerate(batched_input):
        missing = [k for k in ("image", "original_size") if k not in record]
        if missing:
            raise ValueError(f"batched_input[{i}] has no {missing}; see Sam.__call__")
        image = record["image"]
        channels_first, input_size = _layout(tuple(np.shape(image)), i, img_size)
        prompts, rows = _prompts(record, i)
        original = tuple(int(v) for v in record["original_size"])
        if len(original) != 2:
            raise ValueError(f"batched_input[{i}]['original_size'] must be (H, W), got {original}")
        wants_torch = any(torch_compat.is_tensor(v) for v in record.values())
        records.append(
            _Record(
                i,
                image,
                channels_first,
                input_size,
                (original[0], original[1]),
                prompts,
                rows,
                wants_torch,
            )
        )
    return records


@functools.partial(jax.jit, static_argnums=(0, 3))
def _preprocess(graphdef, state, image, channels_first):
    image = jnp.moveaxis(image, 0, -1) if channels_first else image
    return nnx.merge(graphdef, state).preprocess(image[None])[0]


@functools.partial(jax.jit, static_argnums=(0,))
def _encode(graphdef, state, images):
    return nnx.merge(graphdef, state).image_encoder(images)


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=("multimask_output",))
def _decode_rows(graphdef, state, embeddings, row_image, prompts, *, multimask_output):
    model = nnx.merge(graphdef, state)
    low_res, iou, _ = model.decode(
        embeddings[row_image],
        prompts.get("point_coords"),
        prompts.get("point_labels"),
        prompts.get("boxes"),
        prompts.get("mask_inputs"),
        multimask_output=multimask_output,
    )
    return low_res, iou


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _postprocess(low_res, img_size, input_size, original_size, threshold):
    return postprocess_logits(low_res, img_size, input_size, original_size) > threshold


def _decode_group(graphdef, state, embeddings, group: list[_Record], multimask_output: bool):
    """One decoder call for records with the same prompt signature; rows padded to a bucket."""
    n = sum(r.rows for r in group)
    rows = bucket(n)
    row_image = pad_rows(np.repeat([r.index for r in group], [r.rows for r in group]), rows)
    prompts = {}
    for key in group[0].prompts:
        stacked = np.concatenate([r.prompts[key] for r in group])
        dtype = np.int32 if key == "point_labels" else np.float32
        prompts[key] = pad_rows(stacked.astype(dtype), rows)
    low_res, iou = _decode_rows(
        graphdef, state, embeddings, row_image, prompts, multimask_output=multimask_output
    )
    offsets = np.cumsum([0] + [r.rows for r in group])
    return [(low_res[a:b], iou[a:b]) for a, b in zip(offsets[:-1], offsets[1:])]


def batched_forward(
    model, batched_input: list[dict[str, Any]], multimask_output: bool
) -> list[dict[str, Any]]:
    """`Sam.__call__`: see the module docstring. Outputs per record: "masks" [B, C, H, W] bool at
    the original size, "iou_predictions" [B, C], "low_res_logits" [B, C, 256, 256]; torch tensors
    for a record given with torch tensors, JAX arrays otherwise."""
    records = parse_records(batched_input, model.img_size)
    graphdef, state = nnx.split(model)
    device = torch_compat.device_of(state)
    images = [
        _preprocess(graphdef, state, torch_compat.to_jax(r.image, device), r.channels_first)
        for r in records
    ]
    embeddings = _encode(graphdef, state, jnp.stack(images))
    groups: dict[tuple, list[_Record]] = {}
    for r in records:
        groups.setdefault(r.signature, []).append(r)
    outputs: list[dict[str, Any]] = [{} for _ in records]
    for group in groups.values():
        results = _decode_group(graphdef, state, embeddings, group, multimask_output)
        for r, (low_res, iou) in zip(group, results):
            masks = _postprocess(
                low_res, model.img_size, r.input_size, r.original_size, model.mask_threshold
            )
            out = {"masks": masks, "iou_predictions": iou, "low_res_logits": low_res}
            if r.wants_torch:
                out = {k: torch_compat.to_torch(v) for k, v in out.items()}
            outputs[r.index] = out
    return outputs
