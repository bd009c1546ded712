"""Synthetic segmentation scenes: the project's built-in demo data (no real data set can be fetched).

A scene is a textured background with a few textured objects of varied shape (ellipses, polygons,
stars, rings and shapes with holes, thin bars, branches and handles) drawn back to front, so later
objects occlude earlier ones; each instance mask is the part of its object that stays visible.
Scenes are made to be ambiguous for a loose box or a single click in the ways real images are:
objects touch look-alike neighbours (same texture family, close colours) or sit inside a larger
object, and thin parts hang off compact bodies. Everything derives from `np.random.default_rng(seed)`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from . import cluster_scenes, painting
from .folders import DATASETS

SHAPE_KINDS = (
    "ellipse",
    "polygon",
    "star",
    "ring",
    "holed_polygon",
    "crescent",
    "bar",
    "branch",
    "handle",
)

# An instance whose visible part covers less than this fraction of the image is dropped: it would be
# a few pixels after the pipeline's downscaling and teaches nothing but noise.
MIN_VISIBLE_FRACTION = 0.002


def _background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Background image float32 [H, W, 3] and its main colours (objects must contrast with them)."""
    colours = np.stack([painting.random_colour(rng) for _ in range(3)])
    kind = str(rng.choice(("stripes", "noise", "gradient", "checker"), p=(0.3, 0.35, 0.25, 0.1)))
    ys, xs = painting.int_grid(size)
    weight = painting.texture_weight(rng, size, kind, ys, xs)
    # Blotches of a third colour break the background's regularity, so "not background" cannot be
    # learned from one colour pair alone.
    blotches = painting.smooth_noise(rng, size, int(rng.integers(3, 8))) > rng.uniform(0.55, 0.75)
    keep = np.where(blotches, np.float32(0.6), np.float32(1.0))
    # One (H*W, 3) x (3, 3) product mixes all three colours: far cheaper than chained RGB arrays.
    coefficients = np.stack([keep * (1 - weight), keep * weight, 1 - keep], axis=-1)
    image = coefficients @ colours
    c0, c1, c2 = colours
    return image, [c0, c1, 0.6 * (c0 + c1) / 2 + 0.4 * c2]


def _thin_width(rng, size) -> int:
    return max(1, round(size * rng.uniform(0.008, 0.022)))


def _shape(rng: np.random.Generator, kind: str, size: int, cy, cx, radius) -> np.ndarray:
    theta = rng.uniform(0, np.pi)
    if kind == "ellipse":
        return painting.ellipse(size, cy, cx, radius, radius * rng.uniform(0.35, 1.0), theta)
    if kind == "ring":
        a, b = radius, radius * rng.uniform(0.6, 1.0)
        hole = rng.uniform(0.4, 0.7)
        return painting.ellipse(size, cy, cx, a, b, theta) & ~painting.ellipse(
            size, cy, cx, a * hole, b * hole, theta
        )
    if kind == "crescent":
        shift = radius * rng.uniform(0.35, 0.6)
        outer = painting.ellipse(size, cy, cx, radius, radius * rng.uniform(0.7, 1.0), theta)
        bite = painting.ellipse(
            size, cy + shift * np.sin(theta), cx + shift * np.cos(theta), radius, radius, theta
        )
        return outer & ~bite
    canvas, draw = painting.canvas(size)
    if kind == "polygon":
        draw.polygon(
            painting.polygon_points(rng, cy, cx, radius, int(rng.integers(3, 9))), fill=255
        )
    elif kind == "star":
        points = painting.polygon_points(
            rng, cy, cx, radius, int(rng.integers(4, 9)), inner_ratio=rng.uniform(0.3, 0.6)
        )
        draw.polygon(points, fill=255)
    elif kind == "holed_polygon":
        draw.polygon(
            painting.polygon_points(rng, cy, cx, radius, int(rng.integers(5, 9))), fill=255
        )
        hole_r = radius * rng.uniform(0.2, 0.4)
        draw.ellipse((cx - hole_r, cy - hole_r, cx + hole_r, cy + hole_r), fill=0)
    elif kind == "bar":
        half_len, half_w = radius * rng.uniform(1.0, 1.6), _thin_width(rng, size) * 0.75
        c, s = np.cos(theta), np.sin(theta)
        corners = [
            (-half_len, -half_w),
            (half_len, -half_w),
            (half_len, half_w),
            (-half_len, half_w),
        ]
        draw.polygon([(cx + u * c - v * s, cy + u * s + v * c) for u, v in corners], fill=255)
    elif kind == "branch":
        # A trunk with side branches and a small bud at its base: thin, long and tree-like.
        width = _thin_width(rng, size)
        c, s = np.cos(theta), np.sin(theta)
        half_len = radius * rng.uniform(0.9, 1.4)
        start, end = (cx - c * half_len, cy - s * half_len), (cx + c * half_len, cy + s * half_len)
        draw.line([start, end], fill=255, width=width + 1)
        for _ in range(int(rng.integers(2, 5))):
            t = rng.uniform(-0.7, 0.9) * half_len
            root = (cx + c * t, cy + s * t)
            angle = theta + rng.choice((-1, 1)) * rng.uniform(0.4, 1.1)
            length = radius * rng.uniform(0.35, 0.8)
            tip = (root[0] + np.cos(angle) * length, root[1] + np.sin(angle) * length)
            draw.line([root, tip], fill=255, width=width)
        bud = radius * rng.uniform(0.15, 0.3)
        draw.ellipse((start[0] - bud, start[1] - bud, start[0] + bud, start[1] + bud), fill=255)
    elif kind == "handle":
        # A compact body with a thin loop or stick attached (mug, racket): box and click disagree
        # on whether the thin part belongs to the object.
        body_r = radius * rng.uniform(0.55, 0.8)
        draw.ellipse((cx - body_r, cy - body_r * 0.8, cx + body_r, cy + body_r * 0.8), fill=255)
        width = _thin_width(rng, size)
        if rng.random() < 0.5:
            loop = body_r * rng.uniform(0.5, 0.8)
            lx = cx + body_r * 0.9
            draw.arc((lx - loop, cy - loop, lx + loop, cy + loop), -90, 90, fill=255, width=width)
        else:
            length = radius * rng.uniform(1.0, 1.6)
            c, s = np.cos(theta), np.sin(theta)
            draw.line(
                [(cx, cy), (cx + c * (body_r + length), cy + s * (body_r + length))],
                fill=255,
                width=width,
            )
    else:
        raise ValueError(f"unknown shape {kind!r}")
    return painting.as_mask(canvas)


def _place_object(rng, size: int, placed: list, background_colours) -> tuple:
    """Where the next object goes and how it looks: (kind, cy, cx, radius, colour, texture).

    Free-standing, beside an earlier object (a look-alike neighbour) or inside one (a part)."""
    arrangement = (
        "free" if not placed else rng.choice(("free", "beside", "inside"), p=(0.4, 0.4, 0.2))
    )
    kind = str(rng.choice(SHAPE_KINDS))
    if arrangement == "free":
        radius = size * rng.uniform(0.12, 0.3)
        cy, cx = size * rng.uniform(0.2, 0.8, size=2)
        colour = painting.contrasting_colour(rng, background_colours)
        texture = str(rng.choice(painting.TEXTURE_KINDS))
    else:
        anchor_cy, anchor_cx, anchor_r, anchor_colour, anchor_texture = placed[
            int(rng.integers(len(placed)))
        ]
        # A look-alike neighbour: same texture family, nearby colour, so the boundary between
        # the two is visible but subtle and one click is ambiguous between part and group.
        texture = anchor_texture
        colour = np.clip(anchor_colour + rng.uniform(-35, 35, size=3), 0, 255).astype(np.float32)
        if arrangement == "beside":
            radius = anchor_r * rng.uniform(0.6, 1.1)
            angle = rng.uniform(0, 2 * np.pi)
            reach = (anchor_r + radius) * rng.uniform(0.55, 0.9)
            cy, cx = anchor_cy + reach * np.sin(angle), anchor_cx + reach * np.cos(angle)
        else:
            radius = anchor_r * rng.uniform(0.3, 0.5)
            cy, cx = anchor_cy + anchor_r * rng.uniform(-0.3, 0.3, size=2)
            kind = str(rng.choice(("ellipse", "polygon", "star", "crescent")))
            if rng.random() < 0.5:
                colour = painting.contrasting_colour(rng, [anchor_colour])
    return kind, cy, cx, radius, colour, texture


def generate_scene(seed: int | Sequence[int], size: int = 256, max_objects: int = 4) -> dict:
    """One synthetic scene.

    Returns `image` uint8[H, W, 3], `masks` bool[K, H, W] (visible part of each instance, pairwise
    disjoint, each at least MIN_VISIBLE_FRACTION of the image, K >= 1, back to front) and `shapes`
    (the shape kind of each instance). `seed` is anything `np.random.default_rng` accepts.
    """
    if max_objects < 1:
        raise ValueError("max_objects must be >= 1")
    rng = np.random.default_rng(seed)
    image, background_colours = _background(rng, size)
    image = np.array(image, dtype=np.float32)

    num_objects = int(rng.integers(max(1, (max_objects + 1) // 2), max_objects + 1))
    shapes: list[np.ndarray] = []
    kinds: list[str] = []
    placed: list[
        tuple[float, float, float, np.ndarray, str]
    ] = []  # cy, cx, radius, colour, texture
    for _ in range(num_objects):
        kind, cy, cx, radius, colour, texture = _place_object(rng, size, placed, background_colours)
        shape = _shape(rng, kind, size, cy, cx, radius)
        second = painting.contrasting_colour(rng, [colour]) if texture != "solid" else colour
        # Keep the texture's second colour close enough that the object still reads as one thing.
        second = (colour + 0.5 * (second - colour)).astype(np.float32)
        ys, xs = np.nonzero(shape)
        if ys.size == 0:  # placed entirely outside the frame
            continue
        weight = painting.texture_weight(rng, size, texture, ys, xs)
        image[shape] = painting.mix(colour, second, weight, ys.shape)  # same order as nonzero
        shapes.append(shape)
        kinds.append(kind)
        placed.append((cy, cx, radius, colour, texture))

    # Sensor-like grain; uniform rather than Gaussian because it is several times cheaper to draw.
    grain = rng.uniform(3.0, 14.0)
    image += (rng.random((size, size, 3), dtype=np.float32) - 0.5) * grain
    image = np.clip(image, 0, 255).astype(np.uint8)

    drawn = (image, shapes, kinds, background_colours)
    return painting.finish_scene(*drawn, MIN_VISIBLE_FRACTION, (0.25, 0.18), rng)


# Scene family -> (generator, name prefix of its scenes).
_FAMILIES = {
    "shapes": (generate_scene, "scene"),
    "clusters": (cluster_scenes.generate_cluster_scene, "clusters"),
}
SCENE_FAMILIES = tuple(_FAMILIES)


class SceneDataset:
    """`num_scenes` random-access synthetic scenes; scene i is `generate_scene((seed, i), size)`
    ("shapes", this module) or `cluster_scenes.generate_cluster_scene` ("clusters").

    Picklable and stateless, so Grain worker processes regenerate identical scenes.
    """

    def __init__(
        self,
        num_scenes: int,
        seed: int = 0,
        size: int = 256,
        max_objects: int = 4,
        family: str = "shapes",
    ):
        if family not in SCENE_FAMILIES:
            raise ValueError(f"scene family must be one of {SCENE_FAMILIES}, got {family!r}")
        self.num_scenes = int(num_scenes)
        self.seed = int(seed)
        self.size = int(size)
        self.max_objects = int(max_objects)
        self.family = family

    def __len__(self) -> int:
        return self.num_scenes

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if not 0 <= index < self.num_scenes:
            raise IndexError(f"scene {index} out of range [0, {self.num_scenes})")
        generate, prefix = _FAMILIES[self.family]
        scene = generate((self.seed, index), self.size, self.max_objects)
        scene["name"] = f"{prefix}_{self.seed}_{index:06d}"
        return scene


def largest_instance(masks: np.ndarray) -> np.ndarray:
    """The instance with the most visible pixels (the one object a single-mask layout keeps)."""
    return masks[int(np.argmax(masks.reshape(len(masks), -1).sum(axis=1)))]


def write_scene_folder(
    root: str | os.PathLike,
    layout: str,
    num: int,
    seed: int = 0,
    size: int = 256,
    *,
    jpeg_quality: int = 92,
) -> list[tuple[Path, Path]]:
    """Write `num` scenes under `root` in the folder layout of the registered dataset `layout`.

    Images are JPEG, masks PNG 0/255 of each scene's largest instance (the real sets are single
    object per image). Returns the written (image, mask) paths, sorted by stem like `find_pairs`.
    """
    if layout not in DATASETS:
        raise KeyError(f"unknown layout {layout!r}; known: {', '.join(DATASETS)}")
    folder = DATASETS[layout]
    image_dir, mask_dir = Path(root) / folder.image_dir, Path(root) / folder.mask_dir
    image_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)
    scenes = SceneDataset(num, seed=seed, size=size)
    written = []
    for index in range(num):
        scene = scenes[index]
        stem = f"{layout.lower()}_{seed}_{index:05d}"
        image_path = image_dir / f"{stem}{folder.image_exts[0]}"
        mask_path = mask_dir / f"{stem}{folder.mask_exts[0]}"
        Image.fromarray(scene["image"]).save(image_path, quality=jpeg_quality)
        mask = largest_instance(scene["masks"])
        Image.fromarray(mask.astype(np.uint8) * 255).save(mask_path)
        written.append((image_path, mask_path))
    return written
