"""The "clusters" scene family: easy for a tight box, ambiguous for a loose box or a single click.

Real images make SAM fragile in two ways this family reproduces on purpose: objects touch
look-alike neighbours (a pile of fruit, cells, parked cars), so a box drawn too loose takes them
in, and objects have parts of another colour (a mug's handle, a person's shirt), so one click on
a part reads as "this part". A tight box, on the other hand, says exactly which object is meant:
the bodies are compact and smooth-edged, on a calm background.

A scene: a low-contrast background, one to three groups of 2-4 touching look-alike bodies (same
texture, colours within a dozen RGB levels, in half the groups each drawn with a slightly darker
outline, later ones in front), and sometimes one free-standing object. Any body may carry a part
of a clearly different colour on its rim; the part belongs to the body's instance. Everything
derives from `np.random.default_rng(seed)`, like `scenes.generate_scene`, whose output format
this shares.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from . import painting

BODY_KINDS = ("ellipse", "polygon", "rounded")
# Bodies below this share of the image are dropped (a group member hidden behind its neighbours).
MIN_VISIBLE_FRACTION = 0.006
PART_PROBABILITY = 0.4
# RGB spread of the colours inside one group: visible side by side, but the same kind of thing.
GROUP_COLOUR_SPREAD = 12.0
# How much darker a body's outline is, drawn per group: half the groups show no line between
# their touching members, so only a box's extent tells them apart.
OUTLINE_SHADES = (1.0, 0.85)


def _background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """A calm background: two close colours mixed by low-frequency noise."""
    base = painting.random_colour(rng)
    other = np.clip(base + rng.uniform(-40, 40, size=3), 0, 255).astype(np.float32)
    weight = painting.smooth_noise(rng, size, int(rng.integers(2, 6)))[..., None]
    return base + (other - base) * weight, [base, other]


def _body(rng: np.random.Generator, kind: str, size: int, cy: float, cx: float, radius: float):
    """A compact, smooth-edged body mask [size, size]."""
    theta = rng.uniform(0, np.pi)
    if kind == "ellipse":
        return painting.ellipse(size, cy, cx, radius, radius * rng.uniform(0.6, 1.0), theta)
    canvas, draw = painting.canvas(size)
    if kind == "polygon":
        points = painting.polygon_points(rng, cy, cx, radius, int(rng.integers(5, 9)))
        draw.polygon(points, fill=255)
        return painting.as_mask(canvas)
    if kind == "rounded":
        # A square-ish blob: the union of an ellipse and a rotated box.
        half = radius * 0.8
        c, s = np.cos(theta), np.sin(theta)
        corners = [(-half, -half), (half, -half), (half, half), (-half, half)]
        draw.polygon([(cx + u * c - v * s, cy + u * s + v * c) for u, v in corners], fill=255)
        return painting.as_mask(canvas) | painting.ellipse(size, cy, cx, radius, radius, theta)
    raise ValueError(f"unknown body kind {kind!r}")


def _paint(image, mask, colour, texture, rng, size) -> None:
    """Paints `mask` with `colour` (and a close second colour for a texture) in place."""
    ys, xs = np.nonzero(mask)
    second = np.clip(colour + rng.uniform(-30, 30, size=3), 0, 255).astype(np.float32)
    weight = painting.texture_weight(rng, size, texture, ys, xs)
    image[mask] = painting.mix(colour, second, weight, ys.shape)


def _outline(mask: np.ndarray, width: int) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, iterations=width)


def _group(rng, size, background_colours, image, shapes, kinds, budget: int) -> None:
    """One group of touching look-alike bodies (with their parts), drawn into `image`."""
    colour = painting.contrasting_colour(rng, background_colours)
    texture = str(rng.choice(("solid", "noise", "stripes"), p=(0.5, 0.3, 0.2)))
    shade = float(rng.choice(OUTLINE_SHADES))
    members = min(budget, int(rng.integers(2, 5)))
    radius = size * rng.uniform(0.09, 0.15)
    cy, cx = size * rng.uniform(0.25, 0.75, size=2)
    placed: list[tuple[float, float, float]] = []
    for index in range(members):
        if index:
            anchor_cy, anchor_cx, anchor_r = placed[int(rng.integers(len(placed)))]
            radius = anchor_r * rng.uniform(0.8, 1.2)
            angle = rng.uniform(0, 2 * np.pi)
            reach = (anchor_r + radius) * rng.uniform(0.7, 0.9)
            cy, cx = anchor_cy + reach * np.sin(angle), anchor_cx + reach * np.cos(angle)
        kind = str(rng.choice(BODY_KINDS))
        body = _body(rng, kind, size, cy, cx, radius)
        if not body.any():
            continue
        spread = rng.uniform(-GROUP_COLOUR_SPREAD, GROUP_COLOUR_SPREAD, size=3)
        member_colour = np.clip(colour + spread, 0, 255).astype(np.float32)
        _paint(image, body, member_colour, texture, rng, size)
        if shade < 1.0:
            edge = _outline(body, max(1, round(size / 128)))
            image[edge] = image[edge] * shade
        instance = body
        if rng.random() < PART_PROBABILITY:
            angle = rng.uniform(0, 2 * np.pi)
            part_r = radius * rng.uniform(0.35, 0.55)
            py, px = cy + radius * 0.9 * np.sin(angle), cx + radius * 0.9 * np.cos(angle)
            part = painting.ellipse(size, py, px, part_r, part_r * rng.uniform(0.6, 1.0), angle)
            part_colour = painting.contrasting_colour(rng, [member_colour, *background_colours])
            _paint(image, part & ~body, part_colour, "solid", rng, size)
            instance = body | part
            kind += "+part"
        shapes.append(instance)
        kinds.append(kind)
        placed.append((cy, cx, radius))


def generate_cluster_scene(
    seed: int | Sequence[int], size: int = 256, max_objects: int = 8
) -> dict:
    """One "clusters" scene, in `scenes.generate_scene`'s format: `image` uint8 [H, W, 3], `masks`
    bool [K, H, W] (visible parts, disjoint, K >= 1, back to front), `shapes` (kind per instance)."""
    if max_objects < 2:
        raise ValueError(f"the clusters family needs max_objects >= 2, got {max_objects}")
    rng = np.random.default_rng(seed)
    image, background_colours = _background(rng, size)
    image = np.array(image, dtype=np.float32)
    shapes: list[np.ndarray] = []
    kinds: list[str] = []
    for _ in range(int(rng.integers(1, 4))):
        budget = max_objects - len(shapes)
        if budget < 2:
            break
        _group(rng, size, background_colours, image, shapes, kinds, budget)
    if len(shapes) < max_objects and rng.random() < 0.5:
        radius = size * rng.uniform(0.08, 0.14)
        cy, cx = size * rng.uniform(0.15, 0.85, size=2)
        body = _body(rng, str(rng.choice(BODY_KINDS)), size, cy, cx, radius)
        if body.any():
            colour = painting.contrasting_colour(rng, background_colours)
            _paint(image, body, colour, str(rng.choice(painting.TEXTURE_KINDS)), rng, size)
            shapes.append(body)
            kinds.append("free")
    image += (rng.random((size, size, 3), dtype=np.float32) - 0.5) * rng.uniform(2.0, 8.0)
    image = np.clip(image, 0, 255).astype(np.uint8)
    drawn = (image, shapes, kinds, background_colours)
    return painting.finish_scene(*drawn, MIN_VISIBLE_FRACTION, (0.2, 0.15), rng)
