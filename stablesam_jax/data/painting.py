"""Drawing helpers the scene families share: colours, textures, shape masks, occlusion order."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

TEXTURE_KINDS = ("solid", "stripes", "checker", "noise", "gradient")
# RGB distance an object's colour keeps from the colours it must stand out against (the
# background's main colours, or the object it sits on).
MIN_BACKGROUND_CONTRAST = 70.0


@functools.lru_cache(maxsize=8)
def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    yy.setflags(write=False)
    xx.setflags(write=False)
    return yy, xx


@functools.lru_cache(maxsize=8)
def int_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:size, 0:size]
    ys.setflags(write=False)
    xs.setflags(write=False)
    return ys, xs


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a coarse random grid upsampled bilinearly (cheap blobs)."""
    coarse = rng.random((cells, cells), dtype=np.float32)
    return np.asarray(Image.fromarray(coarse).resize((size, size), Image.BILINEAR))


def random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, size=3).astype(np.float32)


def contrasting_colour(rng: np.random.Generator, avoid: Sequence[np.ndarray]) -> np.ndarray:
    colour = random_colour(rng)
    for _ in range(20):
        if min(np.linalg.norm(colour - other) for other in avoid) >= MIN_BACKGROUND_CONTRAST:
            break
        colour = random_colour(rng)
    return colour


def texture_weight(rng: np.random.Generator, size: int, kind: str, ys, xs) -> np.ndarray | None:
    """Mixing weight in [0, 1] between a texture's two colours at integer pixels (ys, xs).

    Evaluated only where it is needed (an object's own pixels), which keeps a scene fast.
    `None` means a plain colour.
    """
    if kind == "solid":
        return None
    if kind == "noise":
        return smooth_noise(rng, size, int(rng.integers(4, 24)))[ys, xs]
    theta = rng.uniform(0, np.pi)
    # Python floats, not numpy float64 scalars, so the float32 pixel maths stays float32.
    cos, sin = float(np.cos(theta)), float(np.sin(theta))
    yf, xf = ys.astype(np.float32), xs.astype(np.float32)
    along = cos * xf + sin * yf
    if kind == "stripes":
        period = size * rng.uniform(0.03, 0.12)
        wave = np.sin(along * (2 * np.pi / period) + rng.uniform(0, 2 * np.pi))
        return np.clip(wave * rng.uniform(1.0, 4.0), -1, 1) * 0.5 + 0.5
    if kind == "checker":
        cell = size * rng.uniform(0.03, 0.1)
        across = cos * yf - sin * xf
        return ((np.floor(along / cell) + np.floor(across / cell)) % 2).astype(np.float32)
    if kind == "gradient":
        return (along - along.min()) / max(float(np.ptp(along)), 1.0)
    raise ValueError(f"unknown texture {kind!r}")


def mix(c0: np.ndarray, c1: np.ndarray, weight: np.ndarray | None, count_shape) -> np.ndarray:
    if weight is None:
        return np.broadcast_to(c0, (*count_shape, 3))
    return c0 + (c1 - c0) * weight[..., None]


def canvas(size: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    canvas = Image.new("L", (size, size), 0)
    return canvas, ImageDraw.Draw(canvas)


def as_mask(canvas: Image.Image) -> np.ndarray:
    return np.asarray(canvas) > 0


def ellipse(size, cy, cx, a, b, theta) -> np.ndarray:
    yy, xx = grid(size)
    dy, dx = yy - float(cy), xx - float(cx)
    cos, sin = float(np.cos(theta)), float(np.sin(theta))
    u = cos * dx + sin * dy
    v = cos * dy - sin * dx
    a, b = float(a), float(b)
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0


def polygon_points(rng, cy, cx, radius, num_vertices, inner_ratio=None):
    """Vertices around (cy, cx); a star when inner_ratio is set (alternating outer/inner radius)."""
    if inner_ratio is None:
        angles = np.sort(rng.uniform(0, 2 * np.pi, num_vertices))
        radii = radius * rng.uniform(0.55, 1.0, num_vertices)
    else:
        angles = rng.uniform(0, 2 * np.pi) + np.arange(2 * num_vertices) * np.pi / num_vertices
        radii = np.where(np.arange(2 * num_vertices) % 2 == 0, radius, radius * inner_ratio)
    return list(zip(cx + radii * np.cos(angles), cy + radii * np.sin(angles)))


def visible_parts(shapes: list[np.ndarray], size: int) -> list[np.ndarray]:
    """Visible part = own pixels minus those of every object drawn later (in front)."""
    visible: list[np.ndarray] = []
    covered = np.zeros((size, size), dtype=bool)
    for shape in reversed(shapes):
        visible.append(shape & ~covered)
        covered |= shape
    visible.reverse()
    return visible


def finish_scene(
    image: np.ndarray,
    shapes: list[np.ndarray],
    kinds: list[str],
    background_colours: Sequence[np.ndarray],
    min_visible_fraction: float,
    fallback_axes: tuple[float, float],
    rng: np.random.Generator,
) -> dict:
    """A drawn scene -> the scene dict: `image` uint8 [H, W, 3], `masks` (the visible part of each
    shape, back to front, those covering at least `min_visible_fraction` of the image) and
    `shapes` (their kinds). If none is left (slivers, heavy occlusion), one centred ellipse of
    semi-axes `fallback_axes` x size is drawn in front, keeping the promise of one instance."""
    size = image.shape[0]
    visible = visible_parts(shapes, size)
    keep = [i for i, m in enumerate(visible) if m.sum() >= min_visible_fraction * size * size]
    if not keep:
        a, b = fallback_axes
        fallback = ellipse(size, size / 2, size / 2, size * a, size * b, 0.0)
        colour = contrasting_colour(rng, background_colours)
        image = np.where(fallback[..., None], colour.astype(np.uint8), image)
        return {"image": image, "masks": fallback[None], "shapes": ("ellipse",)}
    return {
        "image": image,
        "masks": np.stack([visible[i] for i in keep]),
        "shapes": tuple(kinds[i] for i in keep),
    }
