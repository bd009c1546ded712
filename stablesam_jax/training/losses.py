"""Mask losses for SAM training: sigmoid cross-entropy + dice on the low-resolution logits.

Two ways to evaluate them (`sampling`):
- "points" (HQ-SAM, after Mask2Former / PointRend): draw `num_points * oversample_ratio` uniform
  points, keep the `importance_sample_ratio * num_points` where the prediction is most uncertain
  (logit closest to 0), add uniform points up to `num_points`, and compare logits and target only
  there. Defaults 12,544 / 3 / 0.75, as HQ-SAM.
- "dense": every pixel of the low-resolution frame.

Points are (x, y) in [0, 1]^2 and are read with bilinear interpolation, zero outside the map,
exactly like `torch.nn.functional.grid_sample(align_corners=False)` on `2 * p - 1` (HQ-SAM's
`point_sample`). Each example contributes one mask; per-example losses are averaged over the batch
(HQ-SAM sums and divides by the number of masks, the same thing).

The target is the ground truth in the 4x smaller logit frame as a soft fraction: each low-res pixel
holds the share of its 4x4 input block that is foreground (HQ-SAM interpolates bilinearly without
antialiasing, which reads only the block's centre pixels; the block mean keeps thin structures).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..modeling import ops

SAMPLING_MODES = ("points", "dense")


def downsample_mask(mask: jax.Array, size: int) -> jax.Array:
    """mask [B, S, S] (bool or float) -> float32 [B, size, size], the mean of each block."""
    batch, height, width = mask.shape
    if height % size or width % size:
        raise ValueError(f"mask {height}x{width} cannot be block-averaged to {size}x{size}")
    fy, fx = height // size, width // size
    blocks = mask.astype(jnp.float32).reshape(batch, size, fy, size, fx)
    return blocks.mean(axis=(2, 4))


def point_sample(maps: jax.Array, points: jax.Array) -> jax.Array:
    """maps [B, H, W], points [B, P, 2] as (x, y) in [0, 1] -> values [B, P].

    Pixel i covers [i / W, (i + 1) / W), its centre is (i + 0.5) / W (align_corners=False)."""
    height, width = maps.shape[-2:]
    # ops.bilinear_sample wants (y, x) cell positions with (0, 0) at the first cell's centre.
    cells = jnp.stack([points[..., 1] * height - 0.5, points[..., 0] * width - 0.5], axis=-1)
    sample = jax.vmap(ops.bilinear_sample)
    return sample(maps[..., None], cells)[..., 0]


def select_uncertain_points(
    logits: jax.Array, candidates: jax.Array, random_points: jax.Array, num_uncertain: int
) -> jax.Array:
    """The `num_uncertain` candidates with the smallest |logit|, then `random_points`.

    logits [B, H, W]; candidates [B, K, 2]; random_points [B, R, 2] -> [B, num_uncertain + R, 2].
    """
    uncertainty = -jnp.abs(point_sample(logits, candidates))
    _, index = jax.lax.top_k(uncertainty, num_uncertain)
    chosen = jnp.take_along_axis(candidates, index[..., None], axis=1)
    return jnp.concatenate([chosen, random_points.astype(chosen.dtype)], axis=1)


def sample_points(
    key: jax.Array,
    logits: jax.Array,
    num_points: int,
    oversample_ratio: float = 3.0,
    importance_sample_ratio: float = 0.75,
) -> jax.Array:
    """HQ-SAM's `get_uncertain_point_coords_with_randomness`: [B, num_points, 2] (x, y) points.

    Chosen without gradient: the selection only decides where the loss looks."""
    if num_points <= 0:
        raise ValueError(f"num_points must be positive, got {num_points}")
    if oversample_ratio < 1:
        raise ValueError(f"oversample_ratio must be >= 1, got {oversample_ratio}")
    if not 0 <= importance_sample_ratio <= 1:
        raise ValueError(
            f"importance_sample_ratio must be in [0, 1], got {importance_sample_ratio}"
        )
    batch = logits.shape[0]
    num_candidates = int(num_points * oversample_ratio)
    num_uncertain = int(importance_sample_ratio * num_points)
    candidate_key, random_key = jax.random.split(key)
    candidates = jax.random.uniform(candidate_key, (batch, num_candidates, 2))
    random_points = jax.random.uniform(random_key, (batch, num_points - num_uncertain, 2))
    return select_uncertain_points(
        jax.lax.stop_gradient(logits), candidates, random_points, num_uncertain
    )


def sigmoid_bce(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-example mean binary cross-entropy with logits: [B, ...] -> [B]."""
    logits = logits.reshape(logits.shape[0], -1).astype(jnp.float32)
    targets = targets.reshape(targets.shape[0], -1).astype(jnp.float32)
    # max(x, 0) - x t + log(1 + exp(-|x|)): the stable form torch uses.
    per_point = jnp.maximum(logits, 0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))
    return per_point.mean(axis=1)


def dice_loss(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-example soft dice loss with +1 smoothing (HQ-SAM's `dice_loss`): [B, ...] -> [B]."""
    probs = jax.nn.sigmoid(logits.reshape(logits.shape[0], -1).astype(jnp.float32))
    targets = targets.reshape(targets.shape[0], -1).astype(jnp.float32)
    numerator = 2 * (probs * targets).sum(axis=1)
    denominator = probs.sum(axis=1) + targets.sum(axis=1)
    return 1 - (numerator + 1) / (denominator + 1)


def mask_loss(
    logits: jax.Array,
    targets: jax.Array,
    key: jax.Array | None = None,
    *,
    sampling: str = "points",
    num_points: int = 12544,
    oversample_ratio: float = 3.0,
    importance_sample_ratio: float = 0.75,
    bce_weight: float = 1.0,
    dice_weight: float = 1.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """logits [B, H, W], targets [B, H, W] in [0, 1] -> (weighted loss, {"bce", "dice"}).

    `key` draws the points ("points" mode only)."""
    if sampling not in SAMPLING_MODES:
        raise ValueError(f"sampling must be one of {SAMPLING_MODES}, got {sampling!r}")
    if logits.shape != targets.shape:
        raise ValueError(f"logits {logits.shape} and targets {targets.shape} differ in shape")
    if sampling == "points":
        if key is None:
            raise ValueError("point-sampled losses need a PRNG key")
        points = sample_points(key, logits, num_points, oversample_ratio, importance_sample_ratio)
        logits = point_sample(logits, points)
        targets = point_sample(targets.astype(jnp.float32), points)
    bce = sigmoid_bce(logits, targets).mean()
    dice = dice_loss(logits, targets).mean()
    return bce_weight * bce + dice_weight * dice, {"bce": bce, "dice": dice}


def mask_iou(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """IoU of (logits > 0) with (targets >= 0.5) per example, [B, H, W] -> [B]; 1 if both empty."""
    pred = logits.reshape(logits.shape[0], -1) > 0
    gt = targets.reshape(targets.shape[0], -1) >= 0.5
    intersection = (pred & gt).sum(axis=1)
    union = (pred | gt).sum(axis=1)
    return jnp.where(union > 0, intersection / jnp.maximum(union, 1), 1.0)
