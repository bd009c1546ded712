"""The demo's figures from its models: masks, DSP sampling points and DRP weights on the first
evaluation images and prompts (`make_figures`), drawn with `demo.figures`; and the paired
offset-field comparison on the same images (`paired_offsets`)."""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..data.pipeline import make_eval_source
from ..data.prompts import eval_prompts, image_seed
from ..data.scenes import SceneDataset
from ..evaluation import PROMPT_TYPE_TITLES, PromptBatch, SamEvalPredictor, max_points_for
from ..evaluation.diagnostics import dsp_block, mean_field_distance, offset_field
from ..utils.transforms import ResizeLongestSide
from . import figures
from .settings import FIGURE_FILES, DemoSettings

# The prompt types whose masks differ most between SAM and Stable-SAM, and their row titles.
SLOPPY_TITLES = {"noisy_box": "noisy box", "one_point": "1 point"}
# The paired offset comparison: its images (the first evaluation images) and prompts per type.
PAIRED_IMAGES = 10
PAIRED_PROMPTS = 2


@functools.partial(jax.jit, static_argnums=(0,))
def _decode_with_intermediates(graphdef, state, features, coords, labels, boxes, box_valid):
    """Single-mask decode of padded prompts on one embedding [1, g, g, C], with intermediates."""
    model = nnx.merge(graphdef, state)
    low_res, _, intermediates = model.decode_padded(
        features,
        coords,
        labels,
        boxes,
        box_valid,
        multimask_output=False,
        return_intermediates=True,
    )
    return low_res[:, 0], intermediates


class FigureModel:
    """One model's masks and attention for a few prompts on one image."""

    def __init__(self, model, max_points: int):
        self.model = model
        self.max_points = max_points
        self.transform = ResizeLongestSide(model.img_size)
        self.graphdef, self.state = nnx.split(model)

    def _decode(self, features, original_size, prompts: list[dict]):
        batch = PromptBatch.from_prompts(prompts, self.max_points)
        coords = self.transform.apply_coords(batch.point_coords, original_size).astype(np.float32)
        boxes = self.transform.apply_boxes(batch.boxes, original_size).astype(np.float32)
        return _decode_with_intermediates(
            self.graphdef,
            self.state,
            features,
            jnp.asarray(coords),
            jnp.asarray(batch.point_labels),
            jnp.asarray(boxes),
            jnp.asarray(batch.box_valid),
        )

    def offset_fields(self, features, original_size, prompts: list[dict], layer: int) -> np.ndarray:
        """-> the offsets [P, g, g, 2] (dy, dx) in cells from each cell of the DSP in two-way
        block `layer`, one field per prompt."""
        _, inter = self._decode(features, original_size, prompts)
        positions = inter[f"layer{layer}/dsp_positions"][: len(prompts)]  # [P, g, g, 2]
        return np.asarray(jax.vmap(offset_field)(positions))

    def run(self, features, input_size, original_size, prompts: list[dict]):
        """-> masks bool [P, H, W], attention [P, g*g] (output token, mean over heads),
        positions [P, g*g, 2] (y, x) in original-image pixels of the features it attends to,
        origins [g*g, 2] the cells' own positions (equal to positions without DSP)."""
        low_res, inter = self._decode(features, original_size, prompts)
        logits = self.model.postprocess_masks(low_res, input_size, original_size)
        masks = np.asarray(logits > self.model.mask_threshold)
        attention = np.asarray(inter["layer1/token_to_image_attn"])[:, :, 1, :].mean(axis=1)
        grid = self.model.config.image_embedding_size
        ys, xs = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
        own_cells = np.stack([ys, xs], -1).reshape(-1, 2)
        if "layer1/dsp_positions" in inter:
            cells = np.asarray(inter["layer1/dsp_positions"]).reshape(len(prompts), -1, 2)
        else:
            cells = np.broadcast_to(own_cells[None], (len(prompts), grid * grid, 2))
        # Cell i's feature sits at the centre of its patch; map input pixels back to the image.
        patch = self.model.img_size / grid
        ratio = np.asarray(original_size, np.float64) / np.asarray(input_size, np.float64)
        positions = (cells + 0.5) * patch * ratio
        origins = (own_cells + 0.5) * patch * ratio
        count = len(prompts)
        return masks[:count], attention[:count], positions[:count], origins


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


def _drp_scale(model) -> float:
    """DRP's learned scale s (a1 + a2 = s) of the first plugged layer."""
    layer = model.mask_decoder.transformer.layers[min(model.plugin_config.dsp_layers)]
    return float(layer.drp.scale[...])


def _examples(sam, stable_sam, settings: DemoSettings) -> tuple[list[dict], list[dict]]:
    """(mask comparison rows, sampling-point panels): every sloppy prompt type on the first
    `figure_examples` evaluation images; sampling points on the first image only."""
    scenes = SceneDataset(settings.eval_scenes, seed=settings.eval_seed, **settings.scene_options())
    source = make_eval_source(scenes)
    max_points = max_points_for(settings.prompt_types)
    models = {
        "SAM": FigureModel(sam, max_points),
        "Stable-SAM": FigureModel(stable_sam, max_points),
    }
    encoder = SamEvalPredictor(sam, max_points=max_points)
    sloppy = [t for t in SLOPPY_TITLES if t in settings.prompt_types]
    comparison, sampling = [], []
    for index in range(min(settings.figure_examples, len(source))):
        image, gt, name = source[index]
        embedding = encoder.embed([image])[0]
        features = embedding.features[embedding.index : embedding.index + 1]
        for prompt_type in sloppy:
            prompts = eval_prompts(
                gt, prompt_type, num=settings.num_prompts, seed=image_seed(name, settings.seed)
            )
            outputs = {
                label: model.run(features, embedding.input_size, embedding.original_size, prompts)
                for label, model in models.items()
            }
            row = f"{name}\n{SLOPPY_TITLES[prompt_type]}"
            sam_masks, stable_masks = outputs["SAM"][0], outputs["Stable-SAM"][0]
            comparison.append(
                {
                    "image": image,
                    "gt": gt,
                    "label": row,
                    "prompt": prompts[0],
                    "sam_mask": sam_masks[0],
                    "stable_mask": stable_masks[0],
                    "sam_iou": _iou(sam_masks[0], gt),
                    "stable_iou": _iou(stable_masks[0], gt),
                    "sam_masks": sam_masks,
                    "stable_masks": stable_masks,
                }
            )
            if index == 0:
                sampling += [
                    {
                        "image": image,
                        "prompt": prompts[0],
                        "positions": positions[0],
                        "origins": origins if label == "Stable-SAM" else None,
                        "weights": attention[0],
                        "title": label,
                        "row": row,
                    }
                    for label, (_, attention, positions, origins) in outputs.items()
                ]
    return comparison, sampling


def _drp_chart(stable_sam, settings: DemoSettings, drp_a1: dict[str, float]):
    """The DRP routing weight a1 per prompt type as a bar chart, or None without values."""
    bars = {PROMPT_TYPE_TITLES.get(t, t): drp_a1[t] for t in settings.prompt_types if t in drp_a1}
    if not bars:
        return None
    scale = _drp_scale(stable_sam)
    # Softmax routing splits s between the two; sigmoid bounds each by s on its own.
    if stable_sam.plugin_config.routing == "softmax":
        budget = f"a1 + a2 = s = {scale:.3f}"
    else:
        budget = f"a1, a2 each in (0, s), s = {scale:.3f}"
    return figures.bar_chart(
        bars,
        "Stable-SAM: DRP routing weight a1 on the deformed features",
        y_label=f"mean a1 over the evaluation prompts ({budget}, learned)",
        y_max=max(1.0, scale, max(bars.values()) * 1.15),
    )


def make_figures(
    out_dir: Path, sam, stable_sam, settings: DemoSettings, drp_a1: dict[str, float]
) -> dict[str, str]:
    """Writes the three PNGs; returns {kind: path}. Examples are the first evaluation images
    and their first evaluation prompts (the same ones the table scores), not picked by result."""
    comparison, sampling = _examples(sam, stable_sam, settings)
    images = {
        "masks": figures.mask_comparison(comparison) if comparison else None,
        "sampling": figures.sampling_points(sampling, scale=2.0) if sampling else None,
        "drp": _drp_chart(stable_sam, settings, drp_a1),
    }
    paths = {}
    for kind, image in images.items():
        if image is not None:
            image.save(out_dir / FIGURE_FILES[kind])
            paths[kind] = str(out_dir / FIGURE_FILES[kind])
    return paths


def paired_offsets(
    sam, stable_sam, settings: DemoSettings, num_images: int = PAIRED_IMAGES
) -> dict:
    """Whether the DSP's offsets follow the prompt: on the first `num_images` evaluation images,
    the mean distance in cells (`mean_field_distance`) between the offset fields of a noisy box
    and a click on the same image, of two noisy boxes on the same image, and of noisy boxes on
    two images (each image and the next). A field that depends on the image alone gives
    noisy-vs-click about equal to two noisy boxes; {} without DSP or without both prompt types."""
    types = ("noisy_box", "one_point")
    if not stable_sam.plugin_config.dsp_layers or not set(types) <= set(settings.prompt_types):
        return {}
    scenes = SceneDataset(settings.eval_scenes, seed=settings.eval_seed, **settings.scene_options())
    source = make_eval_source(scenes)
    max_points = max_points_for(settings.prompt_types)
    model, layer = FigureModel(stable_sam, max_points), dsp_block(stable_sam.plugin_config)[0]
    encoder = SamEvalPredictor(sam, max_points=max_points)
    fields = []  # per image: {prompt type: [PAIRED_PROMPTS, g, g, 2]}
    for index in range(min(num_images, len(source))):
        image, gt, name = source[index]
        embedding = encoder.embed([image])[0]
        features = embedding.features[embedding.index : embedding.index + 1]
        seed = image_seed(name, settings.seed)
        fields.append(
            {
                t: model.offset_fields(
                    features,
                    embedding.original_size,
                    eval_prompts(gt, t, num=PAIRED_PROMPTS, seed=seed),
                    layer,
                )
                for t in types
            }
        )
    noisy = np.stack([f["noisy_box"][0] for f in fields])  # [I, g, g, 2]
    return {
        "images": len(fields),
        "offset_abs": float(np.linalg.norm(noisy, axis=-1).mean()),
        "noisy_box_vs_one_point": mean_field_distance(
            noisy, np.stack([f["one_point"][0] for f in fields])
        ),
        "noisy_box_vs_noisy_box": mean_field_distance(
            noisy, np.stack([f["noisy_box"][1] for f in fields])
        ),
        "noisy_box_across_images": (
            mean_field_distance(noisy, np.roll(noisy, -1, axis=0)) if len(fields) > 1 else None
        ),
    }
