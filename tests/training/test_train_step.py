"""The train step as pure functions (`training.loss_fn`, `training.train_step`), called directly
on vit_t: what one step changes, that the Trainer runs exactly this step, that the loss falls."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from train_helpers import tiny_config

from stablesam_jax import checkpoint as ckpt
from stablesam_jax import training
from stablesam_jax.builder import build_sam, build_stable_sam
from stablesam_jax.training import progress
from stablesam_jax.training import step as step_lib

# The tiny recipe: the mask decoder trains (its loss falls within a few steps), dense loss.
CONFIG = tiny_config("decoder", batch_size=2)

_train_step = jax.jit(training.train_step, static_argnums=step_lib.STATIC_ARGNUMS)
_loss_fn = jax.jit(training.loss_fn, static_argnames=("model", "settings"))


@pytest.fixture(scope="module")
def model():
    # Never mutated: split_model and the Trainer copy what they train.
    return build_sam("vit_t", seed=0)


@pytest.fixture(scope="module")
def batch():
    host = next(training.iterate_batches(CONFIG))
    return {name: jnp.asarray(host[name]) for name in training.DEVICE_FIELDS}


@pytest.fixture(scope="module")
def parts(model):
    """What the Trainer derives from CONFIG, built here from the public pieces."""
    model_def, params, frozen = training.split_model(
        model, training.subset_filter(CONFIG.trainable)
    )
    schedule = training.make_schedule(CONFIG.optimizer, 1)
    optimizer = training.make_optimizer(CONFIG.optimizer, schedule)
    return model_def, params, frozen, optimizer, schedule


def _fresh_state(params, optimizer, seed=CONFIG.seed):
    # Copies: the Trainer's step donates its state, and `params` is shared by the tests.
    params = {k: jnp.array(v, copy=True) for k, v in params.items()}
    return {
        "params": params,
        "opt_state": optimizer.init(params),
        "step": jnp.int32(0),
        "rng": jax.random.key_data(jax.random.key(seed)),
    }


def _run(parts, state, batch, settings, steps=1):
    model_def, _, frozen, optimizer, schedule = parts
    history = []
    for _ in range(steps):
        state, metrics = _train_step(model_def, state, frozen, batch, optimizer, schedule, settings)
        history.append(jax.device_get(metrics))
    return state, history


def test_split_names_are_the_checkpoint_names_and_merge_puts_them_back(model, parts):
    model_def, params, frozen, _, _ = parts
    decoder = ckpt.weight_names(model, training.subset_filter("decoder"))
    assert set(model_def.names) == set(params) == decoder
    # Every trainable weight goes back to its own place: shift each by a distinct amount.
    shifted = {name: v + i for i, (name, v) in enumerate(sorted(params.items()))}
    merged = ckpt.flat_weights(model_def.merge(shifted, frozen))
    original = ckpt.flat_weights(model)
    for i, name in enumerate(sorted(params)):
        np.testing.assert_array_equal(merged[name], original[name] + i, err_msg=name)
    for name in set(original) - decoder:
        np.testing.assert_array_equal(merged[name], original[name], err_msg=name)


def test_loss_fn_is_bce_plus_dice_plus_the_weighted_iou_term(model, parts, batch):
    model_def, params, frozen, _, _ = parts
    key = jax.random.key(3)
    plain = step_lib.LossSettings(**CONFIG.loss.to_dict())
    loss, aux = jax.device_get(
        _loss_fn(params, frozen, batch, None, key, model=model_def, settings=plain)
    )
    assert set(aux) == {"bce", "dice", "iou_mse", "train_iou"}
    assert 0 <= aux["train_iou"] <= 1 and aux["iou_mse"] > 0
    np.testing.assert_allclose(loss, aux["bce"] + aux["dice"], rtol=1e-6)

    weighted = dataclasses.replace(plain, bce_weight=2.0, iou_weight=0.5)
    loss_w, aux_w = jax.device_get(
        _loss_fn(params, frozen, batch, None, key, model=model_def, settings=weighted)
    )
    np.testing.assert_allclose(aux_w["bce"], aux["bce"], rtol=1e-6)
    np.testing.assert_allclose(
        loss_w, 2.0 * aux["bce"] + aux["dice"] + 0.5 * aux["iou_mse"], rtol=1e-6
    )

    # Embeddings handed in (the frozen-encoder path) give the loss of the encoder run inside.
    embeddings = step_lib.encode(model, batch["image"])
    loss_e, _ = _loss_fn(params, frozen, batch, embeddings, key, model=model_def, settings=plain)
    np.testing.assert_allclose(float(loss_e), loss, rtol=1e-5)


def test_one_step_moves_only_trainable_weights_and_keeps_the_rng(model, parts, batch):
    model_def, params, frozen, optimizer, _ = parts
    settings = training.StepSettings.from_config(CONFIG)
    state = _fresh_state(params, optimizer)
    new_state, (metrics,) = _run(parts, state, batch, settings)

    assert int(new_state["step"]) == 1
    np.testing.assert_array_equal(new_state["rng"], state["rng"])
    assert np.isfinite(metrics["loss"]) and metrics["grad_norm"] > 0
    assert metrics["learning_rate"] == pytest.approx(CONFIG.optimizer.learning_rate)
    assert new_state["params"].keys() == params.keys()
    moved = {n for n in params if not np.array_equal(new_state["params"][n], params[n])}
    # Single-mask training without an IoU loss never reaches the IoU head.
    assert moved and not any(n.startswith("mask_decoder.iou_prediction_head.") for n in moved)
    assert "mask_decoder.mask_tokens.embedding" in moved

    before = ckpt.flat_weights(model, lambda p, v: isinstance(v, nnx.Variable))
    after = ckpt.flat_weights(
        model_def.merge(new_state["params"], frozen), lambda p, v: isinstance(v, nnx.Variable)
    )
    changed = {n for n in before if not np.array_equal(before[n], after[n])}
    assert changed == moved


def test_trainer_step_is_train_step_bit_for_bit(model, parts, batch):
    # Points sampling: the step's key (fold_in of the seed's key and the step) matters too.
    config = tiny_config(
        "decoder", batch_size=2, seed=5, **{"loss.sampling": "points", "loss.num_points": 256}
    )
    trainer = training.Trainer(config, model, mesh=training.make_mesh(jax.devices()[:1]))
    assert trainer.names == list(parts[0].names)
    _, params, _, optimizer, _ = parts
    state = _fresh_state(params, optimizer, seed=config.seed)
    direct, expected = _run(parts, state, batch, training.StepSettings.from_config(config), 2)

    device_batch = trainer.put_batch(jax.device_get(batch))
    got = [jax.device_get(trainer.step(device_batch)) for _ in range(2)]
    for want, have in zip(expected, got, strict=True):
        assert want.keys() == have.keys()
        for name in want:
            np.testing.assert_array_equal(have[name], want[name], err_msg=name)
    for name, value in direct["params"].items():
        np.testing.assert_array_equal(trainer.state["params"][name], value, err_msg=name)


def test_loss_falls_over_a_few_steps_on_a_fixed_batch(parts, batch):
    _, params, _, optimizer, _ = parts
    settings = training.StepSettings.from_config(CONFIG)
    _, history = _run(parts, _fresh_state(params, optimizer), batch, settings, steps=6)
    losses = np.array([m["loss"] for m in history])
    assert np.isfinite(losses).all()
    assert losses[-1] < losses[0] - 0.1, losses
    assert (np.diff(losses) < 0).sum() >= 3, losses


def test_loss_fn_reports_drp_routing_weights(batch):
    """The step logs DRP's a1 (its batch mean and spread) and a2: set the router so that every
    prompt gets softmax(0, log 3) * 1 = (0.25, 0.75); a1 must read 0.25 with no spread, a2 0.75."""
    stable_sam = build_stable_sam("vit_t", seed=0, plugin_seed=1)
    drp = stable_sam.mask_decoder.transformer.layers[1].drp
    drp.fc2.kernel[...] = jnp.zeros_like(drp.fc2.kernel[...])
    drp.fc2.bias[...] = jnp.array([0.0, np.log(3.0)], jnp.float32)
    model_def, params, frozen = training.split_model(stable_sam, training.subset_filter("plugins"))
    settings = step_lib.LossSettings(**CONFIG.loss.to_dict())
    _, aux = jax.device_get(
        _loss_fn(params, frozen, batch, None, jax.random.key(0), model=model_def, settings=settings)
    )
    assert set(aux) == {"bce", "dice", "iou_mse", "train_iou", "drp_a1", "drp_a1_std", "drp_a2"}
    np.testing.assert_allclose(aux["drp_a1"], 0.25, rtol=1e-6)
    np.testing.assert_allclose(aux["drp_a1_std"], 0.0, atol=1e-6)
    np.testing.assert_allclose(aux["drp_a2"], 0.75, rtol=1e-6)


def test_progress_line_shows_both_routing_weights():
    assert progress._routing_text({"drp_a1": 0.25, "drp_a1_std": 0.0, "drp_a2": 0.75}) == (
        "  a1 0.250 a2 0.750"
    )
    assert progress._routing_text({"loss": 1.0}) == ""
