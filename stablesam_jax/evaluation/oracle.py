"""The DSP's ceiling: SAM's masks when the DSP's samples are placed by the ground truth.

Stable-SAM's claim is a mechanism: under a sloppy prompt the DSP moves the decoder's feature
samples toward the prompted object, the tokens gather more of the object, and the mask improves.
A trained offset network can at best learn a field that helps. This module skips the learning:
it sets the field from the ground-truth mask (`oracle_field`) and runs SAM's frozen decoder with
it (`oracle_report`), so the masks say how much any field of that kind can gain at the DSP's
place in that SAM. If moving every sample onto the object does not improve the mask, training
cannot improve it by the paper's mechanism (a learned field may still find another use, such as
a shift that suits the decoder; the diagnostics of a trained model show what it learned).

Fields (offsets in feature-map cells, per cell of the DSP block's map):
- "toward": each sample moves toward the nearest target cell by at most `limit` cells (s_p);
- "onto_target": each sample moves all the way onto the nearest target cell, so every key and
  value of the DSP's attention is the object's (the most that "attention on target" can be);
- "random_direction": the control: the lengths of "toward" in random directions.
The model is SAM with a DSP and no DRP (`oracle_model`): its keys and values are the sampled
features alone, read at the fixed offsets (`DeformableSamplingPlugin.fixed_offsets`).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from ..modeling.plugins import DeformableSamplingPlugin, FixedOffsets
from ..modeling.sam import Sam
from ..predictor import SamPredictor
from ..utils.batching import bucket_chunks
from ..utils.progress import Progress
from .diagnostics import mask_on_grid
from .metrics import box_cut_counts, box_cut_summary, mask_iou_batch, stability_score
from .sources import load_with_prompts

ORACLE_FIELDS = ("toward", "onto_target", "random_direction")
NO_FIELD = "none"  # offsets 0: SAM itself, through the same code path


def target_cells(grid_share: np.ndarray) -> np.ndarray:
    """[G, G] share of each cell inside the mask -> bool [G, G]: cells mostly inside (share > 0.5),
    or, for an object smaller than any cell, the cells with the largest share."""
    on = grid_share > 0.5
    return on if on.any() else grid_share >= grid_share.max()


def nearest_target_vectors(on_target: np.ndarray) -> np.ndarray:
    """bool [G, G] with at least one True -> float32 [G, G, 2]: (dy, dx) in cells from each cell's
    centre to the nearest target cell's (0 on the target; ties go to the first in row-major
    order)."""
    g_h, g_w = on_target.shape
    cells = np.stack(np.meshgrid(np.arange(g_h), np.arange(g_w), indexing="ij"), -1)
    cells = cells.reshape(-1, 2).astype(np.float32)  # [G*G, 2]
    targets = np.argwhere(on_target).astype(np.float32)  # [T, 2]
    distance = np.linalg.norm(cells[:, None, :] - targets[None, :, :], axis=-1)  # [G*G, T]
    nearest = targets[distance.argmin(axis=1)]
    return (nearest - cells).reshape(g_h, g_w, 2)


def oracle_field(
    kind: str, grid_share: np.ndarray, limit: float, rng: np.random.Generator
) -> np.ndarray:
    """The (dy, dx) offsets [G, G, 2] of field `kind` (module docstring) for one GT mask, given as
    its per-cell share [G, G] (`diagnostics.mask_on_grid`); `limit` caps "toward" (s_p)."""
    if kind == NO_FIELD:
        return np.zeros((*grid_share.shape, 2), np.float32)
    vectors = nearest_target_vectors(target_cells(grid_share))
    if kind == "onto_target":
        return vectors
    length = np.linalg.norm(vectors, axis=-1, keepdims=True)
    toward = vectors * np.minimum(1.0, limit / np.maximum(length, 1e-6))
    if kind == "toward":
        return toward.astype(np.float32)
    if kind == "random_direction":
        angle = rng.uniform(0.0, 2.0 * np.pi, grid_share.shape)
        unit = np.stack([np.sin(angle), np.cos(angle)], -1)
        return (unit * np.linalg.norm(toward, axis=-1, keepdims=True)).astype(np.float32)
    raise ValueError(
        f"unknown oracle field {kind!r}; expected {NO_FIELD!r} or one of {ORACLE_FIELDS}"
    )


def dsp_plugins(model: Sam) -> list[DeformableSamplingPlugin]:
    layers = model.mask_decoder.transformer.layers
    return [layer.dsp for layer in layers if layer.dsp is not None]


def oracle_model(model: Sam) -> Sam:
    """Arms `model`'s DSPs (SAM with plugins, no DRP) with fixed offsets, initially 0; returns it.
    The oracle's model; `set_offsets` changes the field."""
    dsps = dsp_plugins(model)
    if not dsps or any(layer.drp is not None for layer in model.mask_decoder.transformer.layers):
        raise ValueError(
            "the oracle needs SAM with DSP plugins and no DRP (build_stable_sam(..., use_drp=False))"
        )
    grid = model.prompt_encoder.image_embedding_size
    for dsp in dsps:
        dsp.fixed_offsets = FixedOffsets(jnp.zeros((*grid, 2), jnp.float32))
    return model


def set_offsets(predictor: SamPredictor, field: np.ndarray) -> None:
    """Every DSP of the predictor's (oracle) model reads at `field` [G, G, 2] from the next call."""
    for dsp in dsp_plugins(predictor.model):
        dsp.fixed_offsets[...] = jnp.asarray(field, jnp.float32)
    predictor.update_weights()


def prompt_masks(predictor: SamPredictor, prompts: list[dict]) -> np.ndarray:
    """bool [P, H, W]: the single-mask output of each prompt (all of one type)."""
    out, start = [], 0
    for size in bucket_chunks(len(prompts), predictor.prompt_buckets):
        chunk = prompts[start : start + size]
        start += size
        boxes = None if chunk[0]["box"] is None else np.stack([p["box"] for p in chunk])
        coords = labels = None
        if chunk[0]["point_coords"] is not None:
            coords = np.stack([p["point_coords"] for p in chunk])
            labels = np.stack([p["point_labels"] for p in chunk])
        masks, _, _ = predictor.predict_batch(coords, labels, boxes, multimask_output=False)
        out.append(masks[:, 0])
    return np.concatenate(out)


def oracle_report(
    model: Sam,
    source,
    prompt_types: Sequence[str],
    num_prompts: int,
    seed: int = 0,
    *,
    fields: Sequence[str] = ORACLE_FIELDS,
    limit: float = 4.0,
    progress: bool = True,
) -> dict:
    """{field: {prompt type: {"miou", "msf"}}} (0-100) of `model` (`oracle_model`) on `source`
    (a `SampleSource`), with the evaluator's prompts (`load_with_prompts`, same seed: the "none"
    row is SAM's evaluation). Box prompt types also get "box_cut" (`metrics.box_cut_summary`,
    pooled over their masks): whether a field lets the mask reach the part of the object a
    loose box cuts off. `progress`: a status line on stderr."""
    predictor = SamPredictor(model)
    status = Progress(len(source), "DSP oracle", enabled=progress)
    grid = model.prompt_encoder.image_embedding_size[0]
    kinds = (NO_FIELD, *fields)
    ious: dict = {k: {t: [] for t in prompt_types} for k in kinds}
    stability: dict = {k: {t: [] for t in prompt_types} for k in kinds}
    cut_counts: dict = {k: {t: [] for t in prompt_types} for k in kinds}
    for index in range(len(source)):
        sample, prompts = load_with_prompts(source, index, prompt_types, num_prompts, seed)
        if prompts is None:
            continue
        predictor.set_image(sample.image)
        share = mask_on_grid(sample.mask, model.img_size, grid)
        rng = np.random.default_rng([seed, index])
        for kind in kinds:
            set_offsets(predictor, oracle_field(kind, share, limit, rng))
            for prompt_type in prompt_types:
                masks = prompt_masks(predictor, prompts[prompt_type])
                ious[kind][prompt_type].append(float(mask_iou_batch(masks, sample.mask).mean()))
                stability[kind][prompt_type].append(stability_score(masks))
                for prompt, mask in zip(prompts[prompt_type], masks):
                    if prompt["box"] is not None:
                        counts = box_cut_counts(mask, sample.mask, prompt["box"])
                        cut_counts[kind][prompt_type].append(counts)
        status.update(index + 1)
    report: dict = {
        kind: {
            t: {
                "miou": 100.0 * float(np.mean(ious[kind][t])),
                "msf": 100.0 * float(np.mean(stability[kind][t])),
            }
            for t in prompt_types
        }
        for kind in kinds
    }
    for kind in kinds:
        for t in prompt_types:
            if cut_counts[kind][t]:
                report[kind][t]["box_cut"] = box_cut_summary(np.concatenate(cut_counts[kind][t]))
    return report


def format_oracle_table(report: dict, prompt_types: Sequence[str]) -> str:
    """The report as a Markdown table: one row per field, mIoU / mSF per prompt type."""
    header = "| DSP offsets | " + " | ".join(prompt_types) + " |"
    lines = [header, "|---" * (len(prompt_types) + 1) + "|"]
    for kind, row in report.items():
        cells = [f"{row[t]['miou']:.1f} / {row[t]['msf']:.1f}" for t in prompt_types]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def format_box_cut_table(report: dict, prompt_type: str) -> str:
    """The "box_cut" numbers of one box prompt type as a Markdown table, one row per field."""
    lines = [
        "| DSP offsets | target outside the box | recall outside | recall inside | spill |",
        "|---|---|---|---|---|",
    ]
    for kind, row in report.items():
        cut = row[prompt_type]["box_cut"]
        cells = [
            _percent(cut[k]) for k in ("cut_share", "recall_outside", "recall_inside", "spill")
        ]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
