"""The demo's figures, drawn with PIL alone (no plotting library is a dependency).

Three kinds, each returned as a PIL image:
- `mask_comparison`: per example, the image with its ground truth, then SAM's and Stable-SAM's mask
  for one prompt (drawn), then how often each pixel is foreground over all of a prompt type's
  prompts (the stability the mSF number measures);
- `sampling_points`: the paper's Figure 2 style: the image positions the output token attends to
  in the plugged attention, as circles whose radius grows with the attention weight;
- `bar_chart`: labelled bars (the DRP routing weight a1 per prompt type).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

GT_COLOUR = (0, 230, 64)
SAM_COLOUR = (255, 64, 64)
STABLE_COLOUR = (40, 140, 255)
PROMPT_COLOUR = (255, 230, 0)
TEXT_COLOUR = (20, 20, 20)
BACKGROUND = (255, 255, 255)


def font(size: int = 14) -> ImageFont.ImageFont:
    # Pillow >= 10.1 bundles a scalable default font; older versions give a fixed bitmap one.
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, text_font) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=text_font)
    return right - left, bottom - top


def _check_image(image) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 HxWx3 image, got {image.dtype} {image.shape}")
    return image


def overlay(image, mask, colour, alpha: float = 0.5) -> np.ndarray:
    """`image` with `mask` (bool, or a weight in [0, 1] per pixel) blended in `colour`."""
    image = _check_image(image).astype(np.float32)
    weight = np.asarray(mask, dtype=np.float32)[..., None] * alpha
    out = image * (1 - weight) + np.asarray(colour, np.float32) * weight
    return np.clip(out, 0, 255).astype(np.uint8)


def outline(image, mask, colour, width: int = 1) -> np.ndarray:
    """`image` with the boundary pixels of `mask` painted `colour`."""
    mask = np.asarray(mask, dtype=bool)
    inner = ndimage.binary_erosion(mask, iterations=width, border_value=0)
    out = _check_image(image).copy()
    out[mask & ~inner] = colour
    return out


def draw_prompt(draw: ImageDraw.ImageDraw, prompt: Mapping, scale: float = 1.0) -> None:
    """Draws a box (outline) and/or positive points (filled dots) given in image pixels."""
    box = prompt.get("box")
    if box is not None:
        x0, y0, x1, y1 = (float(v) * scale for v in box)
        draw.rectangle((x0, y0, x1, y1), outline=PROMPT_COLOUR, width=2)
    coords = prompt.get("point_coords")
    if coords is not None:
        radius = 4
        for x, y in np.asarray(coords, dtype=np.float64) * scale:
            draw.ellipse(
                (x - radius, y - radius, x + radius, y + radius),
                fill=PROMPT_COLOUR,
                outline=(0, 0, 0),
            )


def _resize(image: np.ndarray, scale: float) -> Image.Image:
    pil = Image.fromarray(image)
    if scale == 1.0:
        return pil
    size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
    return pil.resize(size, Image.NEAREST)


def _grid(
    cells: Sequence[Sequence[Image.Image]],
    column_titles: Sequence[str],
    row_titles: Sequence[str],
    title: str,
    pad: int = 6,
) -> Image.Image:
    """Lays same-size panels out in a grid with a title, column titles and row titles."""
    title_font, label_font = font(18), font(14)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    cell_w = max(c.width for row in cells for c in row)
    cell_h = max(c.height for row in cells for c in row)
    row_label_w = max([_text_size(probe, t, label_font)[0] for t in row_titles] + [0]) + 2 * pad
    title_h = _text_size(probe, title, title_font)[1] + 3 * pad
    header_h = max(_text_size(probe, t, label_font)[1] for t in column_titles) + 2 * pad
    columns = max(len(row) for row in cells)
    width = row_label_w + columns * (cell_w + pad) + pad
    height = title_h + header_h + len(cells) * (cell_h + pad) + pad
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, pad), title, fill=TEXT_COLOUR, font=title_font)
    for j, text in enumerate(column_titles):
        text_w, _ = _text_size(draw, text, label_font)
        x = row_label_w + j * (cell_w + pad) + (cell_w - text_w) // 2
        draw.text((x, title_h), text, fill=TEXT_COLOUR, font=label_font)
    for i, row in enumerate(cells):
        y = title_h + header_h + i * (cell_h + pad)
        for line_index, line in enumerate(row_titles[i].split("\n")):
            draw.text((pad, y + line_index * 18), line, fill=TEXT_COLOUR, font=label_font)
        for j, cell in enumerate(row):
            canvas.paste(cell, (row_label_w + j * (cell_w + pad), y))
    return canvas


def _caption(panel: Image.Image, text: str) -> Image.Image:
    draw = ImageDraw.Draw(panel)
    label_font = font(13)
    text_w, text_h = _text_size(draw, text, label_font)
    draw.rectangle((2, 2, text_w + 8, text_h + 8), fill=(255, 255, 255))
    draw.text((5, 3), text, fill=TEXT_COLOUR, font=label_font)
    return panel


def mask_comparison(examples: Sequence[Mapping], scale: float = 1.0) -> Image.Image:
    """One row per example. Each example: image uint8 [H, W, 3], gt bool [H, W], label (row
    title), prompt (dict with box and/or point_coords in pixels), sam_mask / stable_mask bool
    [H, W] for that prompt, sam_iou / stable_iou (0-1), and optionally sam_masks / stable_masks
    bool [P, H, W] for all prompts of the type (drawn as per-pixel foreground frequency)."""
    if not examples:
        raise ValueError("mask_comparison needs at least one example")
    rows, row_titles = [], []
    with_frequency = all("sam_masks" in e and "stable_masks" in e for e in examples)
    for example in examples:
        image = _check_image(example["image"])
        gt = np.asarray(example["gt"], dtype=bool)
        panels = [_resize(outline(image, gt, GT_COLOUR, width=2), scale)]
        for key, colour, name in (
            ("sam", SAM_COLOUR, "SAM"),
            ("stable", STABLE_COLOUR, "Stable-SAM"),
        ):
            panel = _resize(overlay(image, example[f"{key}_mask"], colour, 0.55), scale)
            draw_prompt(ImageDraw.Draw(panel), example["prompt"], scale)
            panels.append(_caption(panel, f"{name} IoU {100 * example[f'{key}_iou']:.0f}"))
        if with_frequency:
            for key, colour in (("sam", SAM_COLOUR), ("stable", STABLE_COLOUR)):
                masks = np.asarray(example[f"{key}_masks"], dtype=bool)
                frequency = masks.mean(axis=0)
                dimmed = (image.astype(np.float32) * 0.45 + 255 * 0.55).astype(np.uint8)
                panel = overlay(dimmed, frequency, colour, 1.0)
                panel = _resize(outline(panel, gt, GT_COLOUR, width=1), scale)
                stability = _stability(masks)
                panels.append(_caption(panel, f"{len(masks)} prompts, SF {100 * stability:.0f}"))
        rows.append(panels)
        row_titles.append(example.get("label", ""))
    columns = ["image + ground truth", "SAM", "Stable-SAM"]
    if with_frequency:
        columns += ["SAM: all prompts", "Stable-SAM: all prompts"]
    title = (
        "Same sloppy prompts (yellow), SAM (red) vs Stable-SAM (blue); ground truth in green. "
        "Last columns: share of prompts marking each pixel."
    )
    return _grid(rows, columns, row_titles, title)


def _stability(masks: np.ndarray) -> float:
    union = np.count_nonzero(masks.any(axis=0))
    if union == 0:
        return 1.0
    return float(np.mean([np.count_nonzero(m) for m in masks]) / union)


def sampling_points(panels: Sequence[Mapping], scale: float = 2.0, top_k: int = 32) -> Image.Image:
    """The paper's Figure 2 style, one panel per entry, laid out in rows of `columns` entries.

    Each panel: image uint8 [H, W, 3], prompt (pixels), positions float [K, 2] as (y, x) in image
    pixels of the features the attention reads, weights float [K] (the output token's attention
    to each, averaged over heads), title, and optional row (row title). The `top_k` positions with
    the largest weights are drawn as circles of area proportional to their weight; with optional
    origins float [K, 2] (the cells' own positions) a line joins each origin to its position.
    """
    if not panels:
        raise ValueError("sampling_points needs at least one panel")
    row_titles: list[str] = []
    rows: list[list[Image.Image]] = []
    column_titles: list[str] = []
    for entry in panels:
        image = _check_image(entry["image"])
        positions = np.asarray(entry["positions"], dtype=np.float64).reshape(-1, 2)
        weights = np.asarray(entry["weights"], dtype=np.float64).reshape(-1)
        if len(positions) != len(weights):
            raise ValueError(f"{len(positions)} positions but {len(weights)} weights")
        dimmed = (image.astype(np.float32) * 0.6 + 255 * 0.4).astype(np.uint8)
        panel = _resize(dimmed, scale)
        draw = ImageDraw.Draw(panel)
        draw_prompt(draw, entry.get("prompt", {}), scale)
        order = np.argsort(-weights)[:top_k]
        top = weights[order[0]] if len(order) else 1.0
        max_radius = 6.0 * scale
        origins = entry.get("origins")
        if origins is not None:
            # Deformable sampling: a grey line from each drawn feature's own cell to where it was
            # read from.
            origins = np.asarray(origins, dtype=np.float64).reshape(-1, 2)
            for index in order:
                (y0, x0), (y1, x1) = origins[index] * scale, positions[index] * scale
                draw.line((x0, y0, x1, y1), fill=(90, 90, 90), width=2)
                draw.ellipse((x0 - 2, y0 - 2, x0 + 2, y0 + 2), fill=(90, 90, 90))
        for index in order[::-1]:  # the strongest drawn last, on top
            y, x = positions[index] * scale
            radius = max(1.5, max_radius * math.sqrt(max(weights[index], 0.0) / top))
            draw.ellipse(
                (x - radius, y - radius, x + radius, y + radius),
                outline=(200, 0, 0),
                fill=(255, 60, 60),
                width=1,
            )
        share = float(weights[order].sum()) if len(order) else 0.0
        _caption(panel, f"top {len(order)} hold {100 * share:.0f}% of the attention")
        row_title = entry.get("row", "")
        if not rows or row_title != row_titles[-1]:
            rows.append([])
            row_titles.append(row_title)
        rows[-1].append(panel)
        if len(rows) == 1:
            column_titles.append(entry.get("title", ""))
    title = (
        "Where the output token looks: feature positions read by the decoder's second "
        "token-to-image attention (circle area ~ attention weight)"
    )
    return _grid(rows, column_titles, row_titles, title)


def bar_chart(
    values: Mapping[str, float],
    title: str,
    y_label: str = "",
    y_max: float | None = None,
    size: tuple[int, int] = (640, 400),
) -> Image.Image:
    """Vertical bars with their values printed above."""
    if not values:
        raise ValueError("bar_chart needs at least one value")
    numbers = [float(v) for v in values.values()]
    if not all(math.isfinite(v) for v in numbers):
        raise ValueError(f"bar_chart values must be finite, got {dict(values)}")
    width, height = size
    canvas = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    title_font, label_font = font(18), font(14)
    draw.text((12, 10), title, fill=TEXT_COLOUR, font=title_font)
    left, right, top, bottom = 70, width - 20, 60, height - 50
    top_value = y_max if y_max is not None else max(numbers) * 1.15
    top_value = max(top_value, 1e-9)

    def y_of(value: float) -> float:
        return bottom - (bottom - top) * min(max(value, 0.0), top_value) / top_value

    draw.line((left, top, left, bottom), fill=TEXT_COLOUR, width=1)
    draw.line((left, bottom, right, bottom), fill=TEXT_COLOUR, width=1)
    for tick in np.linspace(0, top_value, 5):
        y = y_of(tick)
        draw.line((left - 4, y, left, y), fill=TEXT_COLOUR)
        text = f"{tick:.2f}"
        text_w, text_h = _text_size(draw, text, label_font)
        draw.text((left - 8 - text_w, y - text_h / 2 - 2), text, fill=TEXT_COLOUR, font=label_font)
    if y_label:
        draw.text((12, 36), y_label, fill=TEXT_COLOUR, font=label_font)
    slot = (right - left) / len(numbers)
    bar_w = slot * 0.6
    for i, (label, value) in enumerate(zip(values, numbers)):
        x0 = left + i * slot + (slot - bar_w) / 2
        draw.rectangle((x0, y_of(value), x0 + bar_w, bottom), fill=STABLE_COLOUR)
        text = f"{value:.3f}"
        text_w, text_h = _text_size(draw, text, label_font)
        draw.text(
            (x0 + (bar_w - text_w) / 2, y_of(value) - text_h - 6),
            text,
            fill=TEXT_COLOUR,
            font=label_font,
        )
        text_w, _ = _text_size(draw, label, label_font)
        draw.text((x0 + (bar_w - text_w) / 2, bottom + 8), label, fill=TEXT_COLOUR, font=label_font)
    return canvas
