"""What the decoder's DSP block does, as numbers (docs/design.md, "Diagnostics").

Two families, per model and prompt type, computed inside the evaluation's decode call from the
decoder's intermediates of the DSP block (`layer{L}/...`, L the first DSP layer; layer 1 for a
model without plugins, the block where Stable-SAM puts its DSP):

- Offset statistics (plugin models). The offset field of one example (one prompt on one image) is
  `d = dsp_positions - reference grid`, [H, W, 2] (dy, dx) in feature-map cells.
  * `offset_abs`: mean over cells of |d(c)| (Euclidean norm), in cells.
  * `offset_std`: the spatial standard deviation, sqrt(mean_c |d(c) - mean_c' d(c')|^2) (both
    components together), in cells; 0 for a pure translation.
  * `offset_saturated`: share of cells with max(|dy|, |dx|) >= SATURATION_RATIO * offset_scale
    (0.9 s_p: tanh(raw) >= 0.9, i.e. |raw| >= 1.47).
  These three are per example, averaged over an image's prompts, then over images (like mIoU).
  * `shared_fraction`: over all N examples (every prompt of every image) of the prompt type, with
    the across-example mean field m(c) = mean_i d_i(c): sum_{i,c} |m(c)|^2 / sum_{i,c} |d_i(c)|^2,
    the share of the offsets' second moment (about zero) that one common field explains; 1 when
    every example has the same field (a global shift included), near 0 when the fields differ
    and cancel out. NaN when every offset is 0 (a fresh model).
  * `mean_offset`: mean_{i,c} d_i(c) as [dy, dx] in cells; `mean_vector_norm`: its norm, and
    `coherence` = that / mean_{i,c} |d_i(c)|: 1 when every offset points the same way (a
    translation), near 0 for fields that point in many directions.
- Attention on target (every JAX model). The token-to-image attention of the single-mask output
  token (token index 1: SAM orders the tokens IoU token, 4 mask tokens, prompts; mask token 0 is
  the single-mask output), averaged over the heads (each head's weights sum to 1):
  * `attn_target`: sum_j w_j m(p_j), w the attention over the H*W keys, p_j where key j's feature
    was sampled (the DSP's sampling position; the cell itself without DSP) and m the ground-truth
    mask on the embedding grid (`mask_on_grid`), bilinearly sampled with zeros outside the map as
    the DSP samples features. With DRP, key j also carries a2 of the cell's own feature; that share
    is `attn_target_grid`: the same weights with m at the cells themselves (equal to attn_target
    without DSP).
  * `attn_target_routed`: (a1 attn_target + a2 attn_target_grid) / (a1 + a2), each key's
    attention split between its sampled and its own cell's feature as DRP mixes them; what
    actually reaches the output token from the target. attn_target without DRP.
  * `target_area`: mean_c m(c), what uniform attention would score.
  * `value_shared`: |mean_j v_j|^2 / mean_j |v_j|^2 of the attention's values v at the cells (as
    SAM reads them, bias included): the share that is the same everywhere. Near 1, the token
    gets nearly the same update wherever it attends, and moving samples (the DSP) has little
    to change.

Per-example math is in small pure functions, `vmap`-ed over the prompts of a decode call.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ..modeling import ops, sampling
from ..utils.transforms import ResizeLongestSide

SATURATION_RATIO = 0.9
OUTPUT_TOKEN = 1  # the single-mask output token (mask token 0, after the IoU token)
DEFAULT_LAYER = 1  # the two-way block Stable-SAM's DSP sits in by default
# Per-image scalars (the mean over the image's prompts), kept like the metrics.
ATTENTION_KEYS = ("attn_target", "attn_target_grid", "attn_target_routed", "target_area")
VALUE_KEYS = ("value_shared",)
OFFSET_KEYS = ("offset_abs", "offset_std", "offset_saturated")
SCALAR_KEYS = ATTENTION_KEYS + VALUE_KEYS + OFFSET_KEYS
SUMS_KEY = "offset_sums"  # an `OffsetSums` per image, summed over images


def mask_on_grid(mask: np.ndarray, img_size: int, grid: int) -> np.ndarray:
    """GT mask bool [H, W] -> float32 [grid, grid], the share of each cell's patch inside the mask,
    with the image's own preprocessing: the long side resized to `img_size` (`ResizeLongestSide`,
    PIL bilinear), zero padding at the bottom/right to img_size x img_size, then the mean over
    each (img_size / grid)-pixel patch (the encoder's patch of that cell)."""
    mask = np.asarray(mask)
    if mask.ndim != 2 or img_size % grid:
        raise ValueError(
            f"need a 2-D mask and img_size divisible by grid; got mask {mask.shape}, "
            f"img_size {img_size}, grid {grid}"
        )
    resized = ResizeLongestSide(img_size).apply_image(mask.astype(np.uint8) * 255)
    padded = np.zeros((img_size, img_size), np.float32)
    padded[: resized.shape[0], : resized.shape[1]] = resized.astype(np.float32) / 255.0
    patch = img_size // grid
    return padded.reshape(grid, patch, grid, patch).mean(axis=(1, 3))


def dsp_block(plugin_config) -> tuple[int, float | None]:
    """(layer, offset scale) the diagnostics read for a model's `PluginConfig` (or None): the
    first DSP layer, or DEFAULT_LAYER and no scale without DSP."""
    if plugin_config is None or not plugin_config.dsp_layers:
        return DEFAULT_LAYER, None
    return min(plugin_config.dsp_layers), float(plugin_config.offset_scale)


class GridMasks:
    """`mask_on_grid` of a sample's GT mask, put on the devices; the last sample's is kept, as the
    evaluation scores one image's prompt types in a row."""

    def __init__(self, img_size: int, grid: int, sharding: jax.sharding.Sharding):
        self.img_size, self.grid, self.sharding = img_size, grid, sharding
        self._last: tuple = (None, None)  # (sample, its grid mask on the devices)

    def __call__(self, sample) -> jax.Array:
        if self._last[0] is not sample:
            on_grid = mask_on_grid(sample.mask, self.img_size, self.grid)
            self._last = (sample, jax.device_put(on_grid, self.sharding))
        return self._last[1]


def offset_field(positions: jax.Array) -> jax.Array:
    """Sampling positions [H, W, 2] (y, x) in cells -> offsets d [H, W, 2] from the cell grid."""
    h, w, _ = positions.shape
    return positions - ops.reference_grid(h, w)


def offset_stats(offsets: jax.Array, offset_scale: float) -> dict[str, jax.Array]:
    """One example's offsets [H, W, 2] -> scalars offset_abs, offset_std, offset_saturated."""
    norms = jnp.linalg.norm(offsets, axis=-1)  # [H, W]
    centred = offsets - offsets.mean(axis=(0, 1))  # [H, W, 2]
    spatial_var = jnp.mean(jnp.sum(centred**2, axis=-1))
    largest = jnp.max(jnp.abs(offsets), axis=-1)  # [H, W]
    return {
        "offset_abs": norms.mean(),
        "offset_std": jnp.sqrt(spatial_var),
        "offset_saturated": jnp.mean(largest >= SATURATION_RATIO * offset_scale),
    }


def mean_field_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Two stacks of offset fields [..., H, W, 2] -> the mean over every cell of |a - b|, cells."""
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b), axis=-1).mean())


def sample_grid(values: jax.Array, positions: jax.Array) -> jax.Array:
    """A map [H, W] sampled at (y, x) cell positions [N, 2] -> [N]: bilinear, zero outside the
    map, as the DSP samples features."""
    h, w = values.shape
    indices, weights = sampling.bilinear_corners(positions, (h, w))  # [N, 4] x 2
    return sampling.gather_bilinear(values.reshape(h * w, 1), indices, weights)[:, 0]


def attention_on_target(
    attention: jax.Array, positions: jax.Array, grid_mask: jax.Array
) -> jax.Array:
    """attention [heads, Nt, H*W] of one example, positions [H*W, 2] where each key's feature
    was sampled, grid_mask [H, W] -> the output token's head-mean weight on the mask (scalar)."""
    weights = attention[:, OUTPUT_TOKEN, :].astype(jnp.float32).mean(axis=0)  # [H*W]
    return jnp.sum(weights * sample_grid(grid_mask, positions))


def routed_attention(sampled: jax.Array, grid: jax.Array, alpha: jax.Array | None) -> jax.Array:
    """Attention on target of the sampled and the cells' features (scalars), DRP's alpha [2]
    (a1 sampled, a2 own cell) or None -> the share that reaches the token from the target."""
    if alpha is None:
        return sampled
    a1, a2 = alpha[0], alpha[1]
    return (a1 * sampled + a2 * grid) / (a1 + a2)


def value_shared_fraction(values: jax.Array) -> jax.Array:
    """values [H*W, D] of one example's attention -> |mean_j v_j|^2 / mean_j |v_j|^2: the share of
    the values that is the same at every position (1: the token receives the same update
    wherever it attends, so moving the samples changes nothing)."""
    values = values.astype(jnp.float32)
    common = jnp.sum(jnp.square(values.mean(axis=0)))
    return common / jnp.mean(jnp.sum(jnp.square(values), axis=-1))


def example_diagnostics(
    attention: jax.Array,
    positions: jax.Array | None,
    grid_mask: jax.Array,
    offset_scale: float | None,
    alpha: jax.Array | None = None,
    values: jax.Array | None = None,
) -> dict[str, jax.Array]:
    """One example: attention [heads, Nt, H*W], DSP positions [H, W, 2] or None (no DSP),
    grid_mask [H, W], DRP's alpha [2] or None, the attention's values at the cells [H*W, D] or
    None -> the per-example scalars (offset ones only with DSP, `value_shared` with values)."""
    h, w = grid_mask.shape
    cells = ops.reference_grid(h, w).reshape(h * w, 2)
    on_grid = attention_on_target(attention, cells, grid_mask)
    out = {"attn_target_grid": on_grid, "target_area": grid_mask.mean()}
    if values is not None:
        out["value_shared"] = value_shared_fraction(values)
    if positions is None:
        out["attn_target"] = out["attn_target_routed"] = on_grid
        return out
    out["attn_target"] = attention_on_target(attention, positions.reshape(h * w, 2), grid_mask)
    out["attn_target_routed"] = routed_attention(out["attn_target"], on_grid, alpha)
    out.update(offset_stats(offset_field(positions), float(offset_scale or 1.0)))
    return out


def offset_sums(offsets: jax.Array, valid: jax.Array) -> dict[str, jax.Array]:
    """offsets [B, H, W, 2] of a decode call, valid [B] (padding rows False) -> the sums the
    across-example statistics need: field [H, W, 2], energy (sum |d|^2), vector [2], norm (sum
    |d|), count (examples)."""
    keep = valid.astype(offsets.dtype)[:, None, None, None]  # [B, 1, 1, 1]
    kept = offsets * keep
    return {
        "field": kept.sum(axis=0),
        "energy": jnp.sum(kept**2),
        "vector": kept.sum(axis=(0, 1, 2)),
        "norm": jnp.sum(jnp.linalg.norm(kept, axis=-1)),
        "count": jnp.sum(valid.astype(jnp.int32)),
    }


def decode_diagnostics(
    intermediates: Mapping[str, jax.Array],
    grid_mask: jax.Array,
    count: jax.Array,
    *,
    layer: int,
    offset_scale: float | None,
) -> dict:
    """Inside the decode call: intermediates of B prompts (`return_intermediates=True`),
    grid_mask [H, W], count (rows past it are padding) -> {"per_example": {key: [B]},
    "sums": `offset_sums` or absent without DSP}."""
    attention = intermediates[f"layer{layer}/token_to_image_attn"]  # [B, heads, Nt, H*W]
    positions = intermediates.get(f"layer{layer}/dsp_positions")  # [B, H, W, 2] | None
    alpha = intermediates.get(f"layer{layer}/drp_alpha")  # [B, 2] | None
    values = intermediates.get(f"layer{layer}/token_to_image_values")  # [B, H*W, D] | None
    grid_mask = grid_mask.astype(jnp.float32)
    # None (no DSP, no DRP, no values) is an empty pytree to vmap: every example gets None.
    per_example = jax.vmap(
        lambda a, p, r, v: example_diagnostics(a, p, grid_mask, offset_scale, r, v)
    )(attention, positions, alpha, values)
    if positions is None:
        return {"per_example": per_example}
    valid = jnp.arange(positions.shape[0]) < count
    offsets = jax.vmap(offset_field)(positions)
    return {"per_example": per_example, "sums": offset_sums(offsets, valid)}


@dataclasses.dataclass
class OffsetSums:
    """Running sums of offset fields over examples (see `offset_sums`); `+` merges them."""

    field: np.ndarray  # [H, W, 2]
    energy: float
    vector: np.ndarray  # [2]
    norm: float
    count: int

    @classmethod
    def from_arrays(cls, sums: Mapping) -> OffsetSums:
        arrays = jax.device_get(dict(sums))
        return cls(
            np.asarray(arrays["field"], np.float64),
            float(arrays["energy"]),
            np.asarray(arrays["vector"], np.float64),
            float(arrays["norm"]),
            int(arrays["count"]),
        )

    def __add__(self, other: OffsetSums) -> OffsetSums:
        if self.field.shape != other.field.shape:
            raise ValueError(f"offset fields of shapes {self.field.shape} and {other.field.shape}")
        return OffsetSums(
            self.field + other.field,
            self.energy + other.energy,
            self.vector + other.vector,
            self.norm + other.norm,
            self.count + other.count,
        )

    def summary(self) -> dict[str, float]:
        """shared_fraction, mean_offset [dy, dx], mean_vector_norm, coherence (module
        docstring); NaN where undefined."""
        cells = self.field.shape[0] * self.field.shape[1]
        shared = float(np.sum(self.field**2)) / self.count if self.count else math.nan
        mean = self.vector / (self.count * cells) if self.count else np.full(2, math.nan)
        return {
            "shared_fraction": shared / self.energy if self.energy > 0 else math.nan,
            "mean_offset": [float(mean[0]), float(mean[1])],
            "mean_vector_norm": (
                float(np.linalg.norm(self.vector)) / (self.count * cells)
                if self.count
                else math.nan
            ),
            "coherence": float(np.linalg.norm(self.vector)) / self.norm
            if self.norm > 0
            else math.nan,
        }


def host_values(diagnostics: Mapping, count: int) -> dict:
    """The decode call's diagnostics (device arrays) -> one image's values: the mean over its
    `count` prompts of each per-example scalar, and its `OffsetSums` under SUMS_KEY."""
    per_example = jax.device_get(dict(diagnostics["per_example"]))
    values: dict = {k: float(np.mean(np.asarray(v)[:count])) for k, v in per_example.items()}
    if "sums" in diagnostics:
        values[SUMS_KEY] = OffsetSums.from_arrays(diagnostics["sums"])
    return values


def summarize(per_image: Mapping[str, Sequence[float]], sums: OffsetSums | None) -> dict:
    """A model's diagnostics for one prompt type: the mean over images of each per-image scalar
    (SCALAR_KEYS present), plus `OffsetSums.summary()` when there are offsets."""
    summary = {k: float(np.mean(per_image[k])) for k in SCALAR_KEYS if per_image.get(k)}
    if sums is not None:
        summary.update(sums.summary())
    return summary
