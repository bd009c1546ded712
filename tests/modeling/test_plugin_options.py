"""Options against a global-translation offset field: centred offsets and border padding
(PluginConfig) and the DSP's learning-rate multiplier (training.optim), each off by default."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from stablesam_jax.commands.demo import _settings
from stablesam_jax.data.scenes import SCENE_FAMILIES
from stablesam_jax.demo.settings import FULL, SCENE_MAX_OBJECTS
from stablesam_jax.modeling.plugins import DeformableSamplingPlugin, PluginConfig
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
    _, settings = _settings(["--out", "u", *flags, "--scene-family", "clusters"])
    config = train_config(settings, "unused")
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
