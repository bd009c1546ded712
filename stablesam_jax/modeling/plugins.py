"""Stable-SAM's plugins: deformable sampling (DSP) and dynamic routing (DRP).

Both hold `PluginParam` weights only, so `nnx.split(model, PluginParam, ...)` separates exactly the
weights the Stable-SAM recipe trains. Both start as the identity on SAM: the last offset conv is
zero, so offsets are 0 and the sampler returns its input exactly; DRP's softmax times a scale of 1
(or, with sigmoid routing, 1/2 each from its zeroed last layer) gives a1 + a2 = 1, so
a1 * x + a2 * x = x.
"""

from __future__ import annotations

import dataclasses
from typing import cast

import jax
import jax.numpy as jnp
from flax import nnx

from . import ops
from .common import (
    Conv,
    LayerNorm,
    Linear,
    PluginParam,
    depthwise_conv_same,
    gelu,
    pointwise,
)

SAMPLE_SOURCES = ("raw", "projected")
PADDING_MODES = ("zeros", "border")
ROUTING_MODES = ("softmax", "sigmoid")


class FixedOffsets(nnx.Variable):
    """DSP offsets set from outside instead of computed (`evaluation.oracle`, which measures what
    an ideal field would gain); neither a SAM nor a plugin weight, so never trained or saved."""


class FixedMixture(nnx.Variable):
    """[H*W, H*W] weights that replace the DSP's bilinear sampling: sampled key/value i is
    sum_j weights[i, j] * regular key/value j. Every bilinear sample is such a row (at most four
    non-zero weights), so the oracle's relaxation (`evaluation.oracle_fit`) searches a set that
    holds every field. Set from outside, like `FixedOffsets`; never trained or saved."""


class FixedTokenRead(nnx.Variable):
    """[n, C]: what the first n tokens (the output tokens) take from a block's token-to-image
    attention, set from outside instead of computed, the same for every prompt
    (`evaluation.read_swap`, which asks whether a better read would mend a sloppy prompt's
    mask). Works with or without plugins; never trained or saved."""


class FixedImageTokens(nnx.Variable):
    """[H, W, C]: the two-way transformer's image output that the mask is read from, set from
    outside instead of computed, the same for every prompt (`evaluation.read_swap`). Never
    trained or saved."""


@dataclasses.dataclass(frozen=True)
class PluginConfig:
    """Where the paper is silent these are our choices (docs/design.md, "Stable-SAM as built").

    dsp_layers: two-way blocks whose token-to-image attention gets DSP (paper: the second).
    offset_scale: s_p in `dp = s_p * tanh(raw)`, in feature-map cells.
    sample: "raw" samples the block's image tokens x_p (paper Eq. 4/6); "projected" samples the
        output of the offset network's first 1x1 conv (the authors' final figure). Only "raw"
        reproduces SAM exactly at initialization.
    use_drp: False gives the DSP-only ablation (keys/values are the sampled features alone).
    drp_hidden_dim: width of DRP's hidden layer (paper: 32 via the 0.08 M budget).
    seed: initializes the plugin weights, independently of SAM's.
    center_offsets: subtract each example's spatial mean of the raw offsets before the tanh, so
        the field holds deformations and no global translation (the offset network's features
        share most of their energy across cells, so an uncentred last conv learns mostly a
        translation). Off: the paper's form.
    padding: what a sampling position outside the map reads. "zeros" (grid_sample's default):
        nothing, so the key and value are SAM's biases alone; a field that
        shifts every position off the map's edge thereby gives the output token bias-only keys
        to park attention on. "border": the position is clamped onto the map (grid_sample's
        padding_mode="border"), every sample is a real feature. The paper states that p + dp
        stays within (0, 0)..(H - 1, W - 1), which is "border"'s range; the default stays
        "zeros", with which the shipped demo numbers were measured.
    routing: how DRP turns MLP(t_o) into (a1, a2), Eq. 5's sigma. "softmax": a1 + a2 = s for
        every prompt, DRP only splits a shared amount between sampled and own-cell features.
        "sigmoid" (the logistic function, sigma's usual meaning): a1 and a2 in (0, s) each, so
        how much the token reads in all (a1 + a2) can differ by prompt; its last layer starts
        at zero (a1 = a2 = s / 2), which keeps Stable-SAM equal to SAM at initialization.
    """

    dsp_layers: tuple[int, ...] = (1,)
    offset_scale: float = 4.0
    sample: str = "raw"
    use_drp: bool = True
    drp_hidden_dim: int = 32
    seed: int = 0
    center_offsets: bool = False
    padding: str = "zeros"
    routing: str = "softmax"

    def __post_init__(self):
        if self.sample not in SAMPLE_SOURCES:
            raise ValueError(f"sample must be one of {SAMPLE_SOURCES}, got {self.sample!r}")
        if self.padding not in PADDING_MODES:
            raise ValueError(f"padding must be one of {PADDING_MODES}, got {self.padding!r}")
        if self.routing not in ROUTING_MODES:
            raise ValueError(f"routing must be one of {ROUTING_MODES}, got {self.routing!r}")
        if self.offset_scale <= 0:
            raise ValueError(f"offset_scale must be positive, got {self.offset_scale}")
        object.__setattr__(self, "dsp_layers", tuple(int(i) for i in self.dsp_layers))


class DeformableSamplingPlugin(nnx.Module):
    """Offset network + bilinear resampling of the image tokens and their positional encoding."""

    def __init__(self, dim: int, config: PluginConfig, *, rngs: nnx.Rngs):
        self.offset_scale = config.offset_scale
        self.sample = config.sample
        self.center_offsets = bool(config.center_offsets)
        self.padding = config.padding
        self.proj = Conv(dim, dim, 1, rngs=rngs, param_type=PluginParam)
        self.dwconv = Conv(dim, dim, 5, padding=2, groups=dim, rngs=rngs, param_type=PluginParam)
        self.norm = LayerNorm(dim, eps=1e-5, param_type=PluginParam)
        # No bias and zero weights: the offsets start at exactly 0 (and 73,472 DSP parameters).
        self.offset = Conv(
            dim,
            2,
            1,
            use_bias=False,
            rngs=rngs,
            param_type=PluginParam,
            kernel_init=lambda key, shape, dtype=jnp.float32: jnp.zeros(shape, dtype),
        )
        # [H, W, 2] offsets (cells) that replace the network's for every example, when set.
        self.fixed_offsets: FixedOffsets | None = nnx.data(None)
        # [H*W, H*W] sampling weights that replace the bilinear sampling, when set.
        self.fixed_mixture: FixedMixture | None = nnx.data(None)

    def project(self, x_p: jax.Array) -> jax.Array:
        """The offset network's first 1x1 conv: x_p [..., C] -> [..., C]."""
        return pointwise(self.proj, x_p)

    def offsets_of_projected(self, projected: jax.Array) -> jax.Array:
        """The rest of the offset network: `project(x_p)` [B, H, W, C] -> offsets [B, H, W, 2]
        as (dy, dx) cells, float32."""
        if self.fixed_offsets is not None:
            field = self.fixed_offsets[...].astype(jnp.float32)
            return jnp.broadcast_to(field, (projected.shape[0], *field.shape))
        bias = None if self.dwconv.bias is None else self.dwconv.bias[...]
        kernel = self.dwconv.kernel[...].astype(projected.dtype)
        mixed = depthwise_conv_same(projected, kernel, bias)
        hidden = gelu(self.norm(mixed))
        raw = pointwise(self.offset, hidden).astype(jnp.float32)
        if self.center_offsets:
            # The last conv is linear without bias: this equals centring `hidden` per channel.
            raw = raw - raw.mean(axis=(1, 2), keepdims=True)
        return self.offset_scale * jnp.tanh(raw)

    def offsets(self, x_p: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x_p [B, H, W, C] -> (offsets [B, H, W, 2] as (dy, dx) cells, projected features)."""
        projected = self.project(x_p)
        return self.offsets_of_projected(projected), projected

    def sampling_positions(self, offsets: jax.Array) -> jax.Array:
        """offsets [..., H, W, 2] -> where the features are read, p + dp [..., H, W, 2]; with
        "border" padding clamped onto the map (so the positions reported are the ones read)."""
        h, w = offsets.shape[-3:-1]
        positions = ops.reference_grid(h, w) + offsets
        if self.padding == "border":
            positions = jnp.clip(positions, 0.0, jnp.array([h - 1, w - 1], positions.dtype))
        return positions

    def positions(self, x_p: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x_p [B, H, W, C] -> (sampling positions p + dp [B, H, W, 2], projected features)."""
        offsets, projected = self.offsets(x_p)
        return self.sampling_positions(offsets), projected

    def __call__(self, x_p: jax.Array, pe: jax.Array):
        """x_p, pe: [B, H, W, C]. Returns (positions [B, H, W, 2], x_{p+dp}, pe_{p+dp}).

        The paper's form, two resampled maps. The decoder computes the same attention keys and
        values more cheaply by resampling them after SAM's projections
        (`TwoWayAttentionBlock`)."""
        positions, projected = self.positions(x_p)
        source = x_p if self.sample == "raw" else projected
        sample = jax.vmap(ops.bilinear_sample)
        return positions, sample(source, positions), sample(pe, positions)


class DynamicRoutingPlugin(nnx.Module):
    """alpha = sigma(MLP(t_o)) * s: how much of the deformed and the regular features each prompt
    uses; sigma is a softmax over (a1, a2) or a sigmoid on each (`PluginConfig.routing`)."""

    def __init__(self, dim: int, hidden_dim: int = 32, routing: str = "softmax", *, rngs: nnx.Rngs):
        if routing not in ROUTING_MODES:
            raise ValueError(f"routing must be one of {ROUTING_MODES}, got {routing!r}")
        self.routing = routing
        self.fc1 = Linear(dim, hidden_dim, rngs=rngs, param_type=PluginParam)
        self.norm = LayerNorm(hidden_dim, eps=1e-5, param_type=PluginParam)
        self.fc2 = Linear(hidden_dim, 2, rngs=rngs, param_type=PluginParam)
        if routing == "sigmoid":
            # sigmoid(0) = 1/2 for both: a1 + a2 = s = 1, so a fresh plugin changes nothing.
            for weights in (self.fc2.kernel, cast(nnx.Variable, self.fc2.bias)):
                weights[...] = jnp.zeros_like(weights[...])
        self.scale = PluginParam(jnp.ones((), jnp.float32))

    def __call__(self, output_token: jax.Array) -> jax.Array:
        """output_token [B, C] -> alpha [B, 2] = (a1 for sampled, a2 for regular features)."""
        x = output_token.astype(jnp.float32)
        logits = self.fc2(gelu(self.norm(self.fc1(x))))
        if self.routing == "sigmoid":
            return jax.nn.sigmoid(logits) * self.scale[...]
        return jax.nn.softmax(logits, axis=-1) * self.scale[...]
