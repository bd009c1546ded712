"""Options against a global-translation offset field: centred offsets and border padding
(PluginConfig) and the DSP's learning-rate multiplier (training.optim); DRP's sigmoid routing and
its scale's learning-rate multiplier; each off by default."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from stablesam_jax.commands.demo import _settings
from stablesam_jax.data.pipeline import TARGET_INSTANCES
from stablesam_jax.data.scenes import SCENE_FAMILIES
from stablesam_jax.demo.settings import (
    FULL,
    ROUTING_CHOICES,
    SCENE_MAX_OBJECTS,
    TRAIN_TARGET_CHOICES,
)
from stablesam_jax.modeling.plugins import (
    ROUTING_MODES,
    DeformableSamplingPlugin,
    DynamicRoutingPlugin,
    PluginConfig,
)
from stablesam_jax.training import default_config, make_optimizer, optimizer_kind


def _dsp(center: bool, dim: int = 8) -> DeformableSamplingPlugin:
    dsp = DeformableSamplingPlugin(dim, PluginConfig(center_offsets=center), rngs=nnx.Rngs(0))
    # A non-zero last conv (it starts at zero), the same for both plugins.
    kernel = jax.random.normal(jax.random.key(1), dsp.offset.kernel.shape) * 0.3
    dsp.offset.kernel[...] = kernel
    return dsp


def test_defaults_are_the_papers_form():
    assert PluginConfig().center_offsets is False
    config = default_config()
    assert config.plugins.center_offsets is False
    assert config.optimizer.dsp_lr_multiplier == 1.0
    assert optimizer_kind(config.optimizer) == "adam"
    _, demo = _settings(["--out", "unused"])
    assert demo == FULL and not FULL.center_offsets and FULL.dsp_lr_multiplier == 1.0
    assert PluginConfig().routing == config.plugins.routing == FULL.routing == "softmax"
    assert config.optimizer.drp_scale_lr_multiplier == FULL.drp_scale_lr_multiplier == 1.0
    assert config.data.target_instance == FULL.train_target == "random"


def test_padding_defaults_to_grid_samples_zeros_everywhere():
    # Not the paper's stated range (that is "border"): the shipped numbers were measured so.
    assert PluginConfig().padding == "zeros"
    assert default_config().plugins.padding == "zeros" and FULL.padding == "zeros"


def test_centred_offsets_remove_each_examples_mean_raw_offset():
    x = jax.random.normal(jax.random.key(2), (3, 6, 5, 8)) + 2.0  # a shared part, as in SAM
    plain, centred = _dsp(False), _dsp(True)
    raw = np.arctanh(np.asarray(plain.offsets(x)[0], np.float64) / plain.offset_scale)
    assert np.abs(raw.mean(axis=(1, 2))).min() > 0.05  # uncentred: a translation per example
    expected = plain.offset_scale * np.tanh(raw - raw.mean(axis=(1, 2), keepdims=True))
    got = np.asarray(centred.offsets(x)[0])
    np.testing.assert_allclose(got, expected, atol=2e-5)


def _one_update(multiplier: float) -> dict:
    config = default_config().optimizer
    config.dsp_lr_multiplier = multiplier
    tx = make_optimizer(config, optax.constant_schedule(1e-2))
    params = {
        "decoder.layers.1.dsp.offset.kernel": jnp.ones((4, 2)),
        "decoder.layers.1.drp.fc1.kernel": jnp.ones((4, 2)),
    }
    grads = {name: jnp.full((4, 2), 0.5) for name in params}
    updates, _ = tx.update(grads, tx.init(params), params)
    return {name.split(".")[3]: np.asarray(u) for name, u in updates.items()}


def test_dsp_lr_multiplier_scales_only_the_dsp_updates():
    base = _one_update(1.0)
    np.testing.assert_allclose(base["dsp"], base["drp"])
    np.testing.assert_allclose(base["dsp"], -1e-2, rtol=1e-4)  # Adam's first step: -lr * sign
    scaled = _one_update(0.1)
    np.testing.assert_allclose(scaled["drp"], -1e-2, rtol=1e-4)
    np.testing.assert_allclose(scaled["dsp"], -1e-3, rtol=1e-4)
    config = default_config().optimizer
    config.dsp_lr_multiplier = 0.1
    assert optimizer_kind(config) == "adam+dsp_lr"


def test_demo_flags_reach_the_training_config():
    from stablesam_jax.demo.pipeline import train_config  # loads the trainer

    flags = ["--center-offsets", "--dsp-lr-multiplier", "0.1", "--padding", "border"]
    flags += ["--routing", "sigmoid", "--drp-scale-lr-multiplier", "30"]
    flags += ["--train-target", "largest"]
    _, settings = _settings(["--out", "u", *flags, "--scene-family", "clusters"])
    config = train_config(settings, "unused")
    assert config.plugins.routing == "sigmoid"
    assert config.optimizer.drp_scale_lr_multiplier == 30.0
    assert config.data.target_instance == "largest"
    assert ROUTING_CHOICES == ROUTING_MODES and TRAIN_TARGET_CHOICES == TARGET_INSTANCES
    assert config.plugins.center_offsets is True
    assert config.plugins.padding == "border"
    assert config.data.scene_family == "clusters" and config.data.max_objects == 8
    assert tuple(SCENE_MAX_OBJECTS) == SCENE_FAMILIES
    assert config.optimizer.dsp_lr_multiplier == 0.1


def test_unknown_padding_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="padding must be one of .*'zeros', 'border'.*'reflect'"):
        PluginConfig(padding="reflect")


def test_border_padding_reads_the_edge_cell_where_zeros_reads_nothing():
    x = jax.random.normal(jax.random.key(3), (2, 6, 5, 8)) + 1.0
    zeros = _dsp(False)
    border = DeformableSamplingPlugin(8, PluginConfig(padding="border"), rngs=nnx.Rngs(0))
    nnx.update(border, nnx.state(zeros))
    pe = jnp.zeros_like(x)
    positions_z, sampled_z, _ = zeros(x, pe)
    positions_b, sampled_b, _ = border(x, pe)
    pz, pb = np.asarray(positions_z), np.asarray(positions_b)
    off_map = (pz[..., 0] < 0) | (pz[..., 0] > 5) | (pz[..., 1] < 0) | (pz[..., 1] > 4)
    assert off_map.any() and (~off_map).any()
    np.testing.assert_array_equal(pb[~off_map], pz[~off_map])
    np.testing.assert_allclose(pb, np.clip(pz, 0, [5, 4]))
    # Zero padding fades an off-map sample towards 0; clamped, it is a full-weight feature.
    norms_z = np.linalg.norm(np.asarray(sampled_z), axis=-1)[off_map]
    norms_b = np.linalg.norm(np.asarray(sampled_b), axis=-1)[off_map]
    assert (norms_b > norms_z).mean() > 0.9


def _routing_by_hand(drp: DynamicRoutingPlugin, token: np.ndarray) -> np.ndarray:
    """fc1 -> LayerNorm -> exact GELU -> fc2 in float64 numpy: the logits [B, 2]."""

    def f64(variable):
        return np.asarray(variable[...], np.float64)

    h = token @ f64(drp.fc1.kernel) + f64(drp.fc1.bias)
    h = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-5)
    h = h * f64(drp.norm.scale) + f64(drp.norm.bias)
    h = 0.5 * h * (1 + np.vectorize(math.erf)(h / math.sqrt(2)))
    return h @ f64(drp.fc2.kernel) + f64(drp.fc2.bias)


def _randomized_drp(routing: str) -> DynamicRoutingPlugin:
    drp = DynamicRoutingPlugin(16, 8, routing, rngs=nnx.Rngs(0))
    state = nnx.state(drp)
    leaves, treedef = jax.tree_util.tree_flatten(state)
    keys = jax.random.split(jax.random.key(5), len(leaves))
    noisy = [v + 0.5 * jax.random.normal(k, v.shape) for k, v in zip(keys, leaves)]
    nnx.update(drp, jax.tree_util.tree_unflatten(treedef, noisy))
    return drp


def test_sigmoid_routing_weighs_each_feature_alone_and_starts_at_half_the_scale():
    token = np.asarray(jax.random.normal(jax.random.key(4), (3, 16)), np.float64)
    fresh = DynamicRoutingPlugin(16, 8, "sigmoid", rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(np.asarray(fresh(jnp.asarray(token))), 0.5)
    drp = _randomized_drp("sigmoid")
    scale = float(drp.scale[...])
    assert abs(scale - 1.0) > 0.05
    expected = scale / (1 + np.exp(-_routing_by_hand(drp, token)))
    got = np.asarray(drp(jnp.asarray(token, jnp.float32)))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert np.ptp(got.sum(-1)) > 1e-3  # a1 + a2 differs by prompt


def test_softmax_routing_splits_the_scale():
    token = np.asarray(jax.random.normal(jax.random.key(4), (3, 16)), np.float64)
    drp = _randomized_drp("softmax")
    logits = _routing_by_hand(drp, token)
    expected = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True) * float(drp.scale[...])
    got = np.asarray(drp(jnp.asarray(token, jnp.float32)))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_unknown_routing_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="routing must be one of .*'softmax', 'sigmoid'.*'relu'"):
        PluginConfig(routing="relu")


def test_drp_scale_lr_multiplier_scales_only_the_scale_update():
    config = default_config().optimizer
    config.drp_scale_lr_multiplier = 30.0
    tx = make_optimizer(config, optax.constant_schedule(1e-3))
    params = {
        "decoder.layers.1.drp.scale": jnp.ones(()),
        "decoder.layers.1.drp.fc2.kernel": jnp.ones((4, 2)),
        "decoder.layers.1.dsp.offset.kernel": jnp.ones((4, 2)),
    }
    grads = {name: -jnp.ones_like(p) for name, p in params.items()}
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["decoder.layers.1.drp.scale"], 3e-2, rtol=1e-4)
    np.testing.assert_allclose(updates["decoder.layers.1.drp.fc2.kernel"], 1e-3, rtol=1e-4)
    np.testing.assert_allclose(updates["decoder.layers.1.dsp.offset.kernel"], 1e-3, rtol=1e-4)
    assert optimizer_kind(config) == "adam+drp_scale_lr"
    config.dsp_lr_multiplier = 0.1
    assert optimizer_kind(config) == "adam+dsp_lr+drp_scale_lr"
