"""HQ-SAM with the Stable-SAM plugins, and the "hq" trainable subset (no torch needed)."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from stablesam_jax import SamPredictor, build_sam, build_stable_sam
from stablesam_jax.checkpoint import flat_weights, is_sam_weight
from stablesam_jax.modeling import count_params
from stablesam_jax.modeling.mask_decoder_hq import HQ_MODULES
from stablesam_jax.training.trainable import TRAINABLE_SUBSETS


@pytest.fixture(scope="module")
def image():
    return (np.random.default_rng(2).random((200, 260, 3)) * 255).astype(np.uint8)


def test_fresh_stable_hq_sam_equals_hq_sam(image):
    """The plugins sit in the HQ decoder's transformer; fresh ones leave every output as HQ-SAM's."""
    sam, stable = build_sam("hq_vit_t", seed=4), build_stable_sam("hq_vit_t", seed=4)
    assert stable.mask_decoder.transformer.layers[1].dsp is not None
    a, b = flat_weights(sam, is_sam_weight), flat_weights(stable, is_sam_weight)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    p_sam, p_stable = SamPredictor(sam), SamPredictor(stable)
    p_sam.set_image(image)
    p_stable.set_image(image)
    box = np.array([30, 20, 200, 150.0])
    for multimask, hq_only in ((True, False), (False, True)):
        options = dict(multimask_output=multimask, return_logits=True, hq_token_only=hq_only)
        ref = p_sam.predict(box=box, **options)
        got = p_stable.predict(box=box, **options)
        for r, g in zip(ref, got):
            assert np.abs(g - r).max() <= 1e-4 * np.abs(r).max()


def test_hq_subset_is_what_the_official_builder_trains():
    model = build_sam("hq_vit_t", seed=6)
    chosen = flat_weights(model, TRAINABLE_SUBSETS["hq"])
    assert {k.split(".")[1] for k in chosen} == set(HQ_MODULES)
    decoder = model.mask_decoder
    expected = sum(count_params(getattr(decoder, name)) for name in HQ_MODULES)
    assert sum(v.size for v in chosen.values()) == expected
    assert not flat_weights(build_sam("vit_t"), TRAINABLE_SUBSETS["hq"])


def _loss(model, embeddings, boxes, target):
    low_res, _, _ = model.decode(embeddings, boxes=boxes, multimask_output=False)
    return optax.sigmoid_binary_cross_entropy(low_res[:, 0], target).mean()


def test_one_step_moves_only_the_hq_subset():
    model = build_sam("hq_vit_t", seed=7)
    trainable = TRAINABLE_SUBSETS["hq"]
    before = flat_weights(model, lambda p, v: isinstance(v, nnx.Variable))
    chosen = set(flat_weights(model, trainable))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=trainable)
    rng = np.random.default_rng(8)
    embeddings = jnp.asarray(rng.standard_normal((1, 16, 16, 256 + 64)), jnp.float32)
    boxes = jnp.asarray([[20, 30, 120, 160], [60, 40, 200, 220]], jnp.float32)
    target = jnp.asarray(rng.random((2, 64, 64)) > 0.5, jnp.float32)

    @nnx.jit
    def step(model, optimizer):
        diff = nnx.DiffState(0, trainable)
        loss, grads = nnx.value_and_grad(_loss, argnums=diff)(model, embeddings, boxes, target)
        optimizer.update(model, grads)
        return loss

    step(model, optimizer)
    after = flat_weights(model, lambda p, v: isinstance(v, nnx.Variable))
    moved = {k for k in before if not np.array_equal(before[k], after[k])}
    assert moved == chosen, sorted(moved ^ chosen)[:5]


def test_hq_vit_refuses_scan_blocks():
    """A scanned block loop keeps no block's output, and HQ-SAM needs one."""
    with pytest.raises(ValueError, match="scan_blocks=False"):
        build_sam("hq_vit_t", scan_blocks=True)


@pytest.mark.parametrize("model_type, expected", [("vit_t", 5), ("hq_vit_t", 6)])
def test_output_tokens_are_the_tokens_ahead_of_the_prompt(image, model_type, expected):
    """num_output_tokens counts the rows the transformer runs before a prompt's own tokens (a box:
    its two corners): SAM's IoU and four mask tokens, and HQ-SAM's HQ token after them."""
    model = build_sam(model_type, seed=3)
    predictor = SamPredictor(model)
    predictor.set_image(image)
    *_, inter = predictor.predict(
        box=np.array([30, 20, 200, 150.0]), multimask_output=False, return_intermediates=True
    )
    assert model.mask_decoder.num_output_tokens == expected
    assert inter["layer1/token_to_image_out"].shape[0] == expected + 2
