"""Only the chosen subset moves: every other weight is bit-identical after training steps, and no
gradient or optimizer state exists for it."""

import numpy as np
import optax
import pytest
from flax import nnx
from train_helpers import tiny_config

from stablesam_jax import checkpoint as ckpt
from stablesam_jax import training
from stablesam_jax.builder import build_stable_sam
from stablesam_jax.modeling.common import PluginParam


def _expected_trainable(subset: str, name: str, is_plugin: bool) -> bool:
    # Independent of the NNX filters: the rule each recipe states, on dotted names.
    if subset == "plugins":
        return is_plugin
    if is_plugin:
        return False
    if subset == "decoder":
        return name.startswith("mask_decoder.")
    if subset == "prompt_tokens":
        return name.startswith(
            (
                "mask_decoder.iou_token.",
                "mask_decoder.mask_tokens.",
                "mask_decoder.output_hypernetworks_mlps.0.",
            )
        )
    if subset == "all":
        return True
    raise AssertionError(subset)


@pytest.fixture(scope="module")
def batch():
    config = tiny_config(batch_size=2)
    return next(training.iterate_batches(config))


@pytest.fixture(scope="module")
def model():
    # One build for all cases: training never mutates it (the trainer splits it into states).
    return build_stable_sam("vit_t", seed=0)


@pytest.mark.parametrize("subset", ["plugins", "prompt_tokens", "all"])
def test_only_the_chosen_subset_moves(subset, batch, model):
    config = tiny_config(subset, batch_size=2, with_plugins=True, model_seed=0)
    before = ckpt.flat_weights(model, lambda p, v: isinstance(v, nnx.Variable))
    plugin_names = ckpt.weight_names(model, lambda p, v: isinstance(v, PluginParam))
    buffers = set(before) - ckpt.weight_names(model, lambda p, v: isinstance(v, nnx.Param))

    trainer = training.Trainer(config, model)
    expected = {
        n for n in before if n not in buffers and _expected_trainable(subset, n, n in plugin_names)
    }
    assert set(trainer.names) == expected
    # Optimizer state mirrors the trainable weights only: Adam's mu and nu (plus scalar counts).
    for moment in ("mu", "nu"):
        state = optax.tree_utils.tree_get(trainer.state["opt_state"], moment)
        assert {k: v.shape for k, v in state.items()} == {n: before[n].shape for n in expected}
    assert sum(v.size for v in trainer.state["params"].values()) == trainer.num_trainable

    device_batch = trainer.put_batch(batch)
    for _ in range(2):
        metrics = trainer.step(device_batch)
    assert np.isfinite(float(metrics["loss"]))

    after = ckpt.flat_weights(trainer.trained_model(), lambda p, v: isinstance(v, nnx.Variable))
    assert after.keys() == before.keys()
    for name in before:
        if name not in expected:
            np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    moved = {n for n in expected if not np.array_equal(after[n], before[n])}
    if subset == "all":
        # Weights the batch never reaches (the negative-point embedding, the IoU head without an
        # IoU loss, the unused multimask MLPs) get zero gradients, so Adam leaves them; the
        # encoder, differentiated only in this mode, must move as a whole.
        encoder = {n for n in expected if n.startswith("image_encoder.")}
        assert encoder and encoder <= moved, sorted(encoder - moved)[:10]
    else:
        # The DSP offset conv starts at zero, so the DSP weights before it get no gradient at
        # step 1, but do at step 2: after two steps every trainable weight has moved.
        assert moved == expected, sorted(expected - moved)[:10]


def test_plugin_seed_from_config_changes_only_plugin_weights():
    def weights(plugin_seed):
        config = tiny_config("plugins", with_plugins=True, model_seed=0)
        config.plugins.seed = plugin_seed
        model = training.build_model(config)
        plugin_names = ckpt.weight_names(model, lambda p, v: isinstance(v, PluginParam))
        return ckpt.flat_weights(model, lambda p, v: isinstance(v, nnx.Variable)), plugin_names

    first, plugin_names = weights(0)
    second, _ = weights(1)
    differing = {n for n in first if not np.array_equal(first[n], second[n])}
    assert differing and differing <= plugin_names
