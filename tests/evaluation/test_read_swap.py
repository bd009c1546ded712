"""The read swap (`evaluation.read_swap`): the decoder's hooks that replace the output tokens'
token-to-image read and the image tokens, and the report built on them."""

import jax.numpy as jnp
import numpy as np
import pytest

from stablesam_jax import SamPredictor, evaluation, pretrained
from stablesam_jax.data.prompts import mask_to_box
from stablesam_jax.data.scenes import SceneDataset
from stablesam_jax.evaluation import read_swap
from stablesam_jax.evaluation.sources import as_sample_sources
from stablesam_jax.modeling.plugins import FixedImageTokens, FixedTokenRead, PluginConfig

N_OUT = 5  # the IoU token and SAM's four mask tokens


@pytest.fixture(scope="module")
def scene():
    scene = SceneDataset(1, seed=4, size=256, max_objects=8, family="clusters")[0]
    return scene["image"], scene["masks"][0]


def _predict(predictor, **prompt):
    *_, logits, inter = predictor.predict(
        multimask_output=False, return_intermediates=True, **prompt
    )
    return logits, inter


def test_the_read_intermediate_is_the_attention_written_out(scene):
    image, mask = scene
    model = pretrained.build_demo_sam()
    predictor = SamPredictor(model)
    predictor.set_image(image)
    _, inter = _predict(predictor, box=mask_to_box(mask))
    attention = model.mask_decoder.transformer.layers[1].cross_attn_token_to_image
    weights = np.asarray(inter["layer1/token_to_image_attn"])  # [heads, Nt, H*W]
    values = np.asarray(inter["layer1/token_to_image_values"])  # [H*W, D]
    heads, tokens, cells = weights.shape
    per_head = values.reshape(cells, heads, -1).transpose(1, 0, 2)  # [heads, H*W, D/heads]
    mixed = np.einsum("hqk,hkc->qhc", weights, per_head).reshape(tokens, -1)
    expected = np.asarray(attention.out_proj(jnp.asarray(mixed)))
    np.testing.assert_allclose(inter["layer1/token_to_image_out"], expected, atol=1e-4)


@pytest.mark.parametrize("plugins", [None, PluginConfig(use_drp=False)])
def test_a_fixed_read_replaces_the_output_tokens_read(scene, plugins):
    image, mask = scene
    model = pretrained.build_demo_sam(plugin_config=plugins)
    predictor = SamPredictor(model)
    predictor.set_image(image)
    box = mask_to_box(mask)
    logits, inter = _predict(predictor, box=box)
    read = np.asarray(inter["layer1/token_to_image_out"])  # [Nt, C]
    block = model.mask_decoder.transformer.layers[1]

    block.fixed_read = FixedTokenRead(jnp.asarray(read[:N_OUT]))
    predictor.update_weights()
    same, _ = _predict(predictor, box=box)
    np.testing.assert_allclose(same, logits, rtol=1e-5, atol=1e-5)

    other = np.random.default_rng(0).normal(size=(N_OUT, read.shape[1])).astype(np.float32)
    block.fixed_read[...] = jnp.asarray(other)
    predictor.update_weights()
    changed, changed_inter = _predict(predictor, box=box)
    got = np.asarray(changed_inter["layer1/token_to_image_out"])
    np.testing.assert_array_equal(got[:N_OUT], other)
    np.testing.assert_allclose(got[N_OUT:], read[N_OUT:], rtol=1e-5, atol=1e-5)  # prompt tokens
    assert np.abs(changed - logits).max() > 1e-2


def test_fixed_image_tokens_are_what_the_mask_is_read_from(scene):
    image, mask = scene
    model = pretrained.build_demo_sam()
    predictor = SamPredictor(model)
    predictor.set_image(image)
    box = mask_to_box(mask)
    logits, inter = _predict(predictor, box=box)
    own = np.asarray(inter["image_tokens"])  # [H, W, C]
    assert own.shape == (16, 16, 256)

    click = {"point_coords": np.argwhere(mask)[:1, ::-1].astype(np.float32), "point_labels": [1]}
    click_logits, click_inter = _predict(predictor, **click)
    model.mask_decoder.fixed_image_tokens = FixedImageTokens(jnp.asarray(own))
    predictor.update_weights()
    same, _ = _predict(predictor, box=box)
    np.testing.assert_allclose(same, logits, rtol=1e-5, atol=1e-5)
    swapped, swapped_inter = _predict(predictor, **click)
    np.testing.assert_array_equal(swapped_inter["image_tokens"], own)
    # The click's tokens are its own: only the map they are read against changed.
    np.testing.assert_allclose(
        swapped_inter["layer1/token_to_image_out"],
        click_inter["layer1/token_to_image_out"],
        rtol=1e-5,
        atol=1e-5,
    )
    assert np.abs(swapped - click_logits).max() > 1e-2


def _spec(num=2):
    return evaluation.DatasetSpec(
        name="scenes", kind="scenes", num=num, seed=4, size=256, max_objects=8, family="clusters"
    )


def test_the_sam_row_is_the_evaluators_and_the_model_is_left_as_it_came():
    types = ("gt_box", "noisy_box", "one_point")
    model = pretrained.build_demo_sam()
    source = as_sample_sources([_spec()])["scenes"]
    report = read_swap.read_swap_report(model, source, types, 3, 0, progress=False)
    assert list(report) == list(read_swap.READ_SWAP_ROWS)
    evaluated = evaluation.evaluate_report(
        {"SAM": pretrained.build_demo_sam()}, [_spec()], types, 3, 0, progress=False
    )["results"][evaluation.POOLED]["SAM"]
    for prompt_type in types:
        assert report["sam"][prompt_type] == pytest.approx(evaluated[prompt_type]["miou"], abs=1e-3)
    for row in read_swap.READ_SWAP_ROWS[1:]:
        assert set(report[row]) == {"noisy_box", "one_point"}
    # Zeroing the read moves the masks: the rows measure the swapped model, not SAM again.
    assert report["no_read"]["one_point"] != pytest.approx(report["sam"]["one_point"], abs=0.05)
    assert model.mask_decoder.fixed_image_tokens is None
    assert all(layer.fixed_read is None for layer in model.mask_decoder.transformer.layers)


def test_the_report_needs_the_gt_box_and_a_block_of_the_model():
    source = as_sample_sources([_spec(1)])["scenes"]
    with pytest.raises(ValueError, match="gt_box"):
        read_swap.read_swap_report(pretrained.build_demo_sam(), source, ("one_point",), 2)
    with pytest.raises(ValueError, match="layer 2"):
        read_swap.read_swap_report(
            pretrained.build_demo_sam(), source, ("gt_box", "one_point"), 2, layer=2
        )


def test_format_has_a_row_per_replacement_and_a_dash_for_the_reference():
    report = {
        "sam": {"gt_box": 80.0, "one_point": 40.0},
        "gt_box_read": {"one_point": 41.25},
    }
    lines = read_swap.format_read_swap_table(report, ("gt_box", "one_point")).splitlines()
    assert lines[0] == "| replaced from the GT-box run | gt_box | one_point |"
    assert lines[2:] == ["| sam | 80.0 | 40.0 |", "| gt_box_read | - | 41.2 |"]
