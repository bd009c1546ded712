"""Test models with every weight random (SAM's own init leaves some at zero, which hides bugs):
built abstractly and filled, since op-by-op initialization costs half a minute of compiling."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from stablesam_jax.checkpoint import path_name
from stablesam_jax.modeling import SAM_VARIANTS, Sam
from stablesam_jax.modeling.plugins import PluginConfig


def random_stable_sam(seed: int = 0, *, sam_like: bool = False) -> Sam:
    """vit_t Stable-SAM, every weight 0.05 * N(0, 1). `sam_like`: the positional encoding's
    Gaussian matrix at N(0, 1), LayerNorm scales around 1 and the DRP scale 1, as in a real
    model, so outputs are not near-constant."""
    model = nnx.eval_shape(
        lambda: Sam(
            SAM_VARIANTS["vit_t"],
            rngs=nnx.Rngs(0),
            plugin_config=PluginConfig(),
            model_type="vit_t",
        )
    )
    rng = np.random.default_rng(seed)
    for path, var in nnx.iter_graph(model):
        if not isinstance(var, nnx.Variable):
            continue
        value = rng.standard_normal(var.shape)
        name = path_name(path)
        if not (sam_like and "positional_encoding_gaussian_matrix" in name):
            value = 0.05 * value
        if sam_like and name.endswith("scale") and "norm" in name:
            value += 1.0
        if sam_like and name.endswith("drp.scale"):
            value = np.ones(var.shape)
        var.set_value(jnp.asarray(value, var.dtype))
    return model
