"""The plugins' ceiling: fitted sampling mixtures (evaluation.oracle_fit)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stablesam_jax import SamPredictor, evaluation, pretrained
from stablesam_jax.data.prompts import mask_to_box
from stablesam_jax.data.scenes import SceneDataset
from stablesam_jax.evaluation import oracle, oracle_fit
from stablesam_jax.evaluation.diagnostics import mask_on_grid
from stablesam_jax.evaluation.sources import as_sample_sources
from stablesam_jax.modeling.plugins import FixedMixture, PluginConfig


@pytest.fixture(autouse=True)
def _release_executables():
    """Each fit compiles the whole decoder under a loop; on the CPU every executable holds
    thousands of JIT memory maps, and one pytest process runs the whole suite under the kernel's
    map-count limit (65,530): drop them after each test."""
    yield
    jax.clear_caches()


def test_window_of_radius_one_on_a_3x3_grid():
    window = oracle_fit.window_mask((3, 3), 1.0)
    assert window.shape == (9, 10)
    assert window[:, -1].all()  # reading nothing is always allowed
    # Row-major cells: a corner reaches 4 cells, an edge 6, the centre all 9.
    np.testing.assert_array_equal(window[:, :-1].sum(1), [4, 6, 4, 6, 9, 6, 4, 6, 4])
    assert set(np.flatnonzero(window[0, :-1])) == {0, 1, 3, 4}
    np.testing.assert_array_equal(
        oracle_fit.window_mask((3, 3), 0.0)[:, :-1], np.eye(9, dtype=bool)
    )


def test_mixture_weights_stay_in_the_window_and_sum_to_c_with_nothing():
    window = oracle_fit.window_mask((3, 3), 1.0)
    logits = jnp.asarray(np.random.default_rng(0).normal(size=window.shape), jnp.float32)
    scale = jnp.float32(0.3)
    weights = np.asarray(oracle_fit.mixture_weights(logits, scale, jnp.asarray(window)))
    assert weights.shape == (9, 9)
    assert (weights[~window[:, :-1]] == 0).all() and (weights >= 0).all()
    c = np.log1p(np.exp(0.3))  # softplus
    row_sums = weights.sum(1)
    assert (row_sums < c).all()  # the "nothing" column takes the rest
    nothing = np.exp(logits[:, -1]) / np.where(window, np.exp(logits), 0).sum(1)
    np.testing.assert_allclose(row_sums + c * nothing, c, rtol=1e-5)


def _bilinear_matrix(field: np.ndarray) -> np.ndarray:
    """[G, G, 2] offsets -> [G*G, G*G] bilinear sampling weights, zero outside the map (written
    out here, not taken from the model's sampler)."""
    g = field.shape[0]
    matrix = np.zeros((g * g, g * g), np.float32)
    for i in range(g):
        for j in range(g):
            y, x = i + field[i, j, 0], j + field[i, j, 1]
            y0, x0 = int(np.floor(y)), int(np.floor(x))
            for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
                for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
                    if 0 <= yy < g and 0 <= xx < g:
                        matrix[i * g + j, yy * g + xx] += wy * wx
    return matrix


@pytest.fixture(scope="module")
def scene():
    scene = SceneDataset(1, seed=4, size=256, max_objects=8, family="clusters")[0]
    return scene["image"], scene["masks"][0]


def _demo_sam_with_dsp():
    return pretrained.build_demo_sam(plugin_config=PluginConfig(use_drp=False))


def test_a_mixture_of_a_fields_bilinear_weights_reads_as_that_field(scene):
    image, mask = scene
    box = mask_to_box(mask)
    field = np.random.default_rng(1).uniform(-4, 4, (16, 16, 2)).astype(np.float32)
    by_field = SamPredictor(oracle.oracle_model(_demo_sam_with_dsp()))
    by_field.set_image(image)
    oracle.set_offsets(by_field, field)
    _, _, field_logits = by_field.predict(box=box, multimask_output=False)

    model = oracle_fit.mixture_model(_demo_sam_with_dsp())
    identity = SamPredictor(model)
    identity.set_image(image)
    _, _, identity_logits = identity.predict(box=box, multimask_output=False)
    sam = SamPredictor(pretrained.build_demo_sam())
    sam.set_image(image)
    _, _, sam_logits = sam.predict(box=box, multimask_output=False)
    np.testing.assert_allclose(identity_logits, sam_logits, rtol=1e-5, atol=1e-5)

    for dsp in oracle.dsp_plugins(model):
        dsp.fixed_mixture = FixedMixture(jnp.asarray(_bilinear_matrix(field)))
    mixed = SamPredictor(model)
    mixed.set_image(image)
    _, _, mixed_logits = mixed.predict(box=box, multimask_output=False)
    np.testing.assert_allclose(mixed_logits, field_logits, rtol=1e-4, atol=1e-4)
    assert np.abs(field_logits - sam_logits).max() > 1e-2


def test_fit_lowers_every_prompts_loss_and_decodes_as_the_predictor(scene):
    image, mask = scene
    model = oracle_fit.mixture_model(_demo_sam_with_dsp())
    predictor = SamPredictor(model)
    predictor.set_image(image)
    boxes = np.stack([mask_to_box(mask) + d for d in (0.0, 12.0, -9.0)]).astype(np.float32)
    kwargs = dict(
        input_size=predictor.input_size,
        original_size=predictor.original_size,
        radius=4.0,
        learning_rate=0.1,
    )
    target = mask_on_grid(mask, 256, 64)
    start = oracle_fit.fit_mixtures(
        model, predictor.features, {"boxes": boxes}, target, steps=0, **kwargs
    )
    np.testing.assert_array_equal(start["loss_before"], start["loss_after"])

    # The fit's own decode path against the predictor's, at the mixture it starts from.
    window = oracle_fit.window_mask((16, 16), 4.0)
    initial = oracle_fit.mixture_weights(
        jnp.asarray(oracle_fit.initial_logits(window)),
        jnp.asarray(np.log(np.expm1(1.0)), jnp.float32),
        jnp.asarray(window),
    )
    for dsp in oracle.dsp_plugins(model):
        dsp.fixed_mixture[...] = initial
    predictor.update_weights()
    masks, _, _ = predictor.predict_batch(boxes=boxes, multimask_output=False)
    np.testing.assert_array_equal(start["masks"], masks[:, 0])

    fitted = oracle_fit.fit_mixtures(
        model, predictor.features, {"boxes": boxes}, target, steps=8, free_scale=False, **kwargs
    )
    assert (fitted["loss_after"] < fitted["loss_before"]).all()
    np.testing.assert_array_equal(fitted["scale"], 1.0)  # the DSP alone keeps c = 1
    free = oracle_fit.fit_mixtures(
        model, predictor.features, {"boxes": boxes}, target, steps=8, **kwargs
    )
    assert (free["loss_after"] < free["loss_before"]).all()
    assert (free["scale"] != 1.0).all()


def test_ceiling_report_rows_and_its_none_row_is_the_oracles_sam():
    spec = evaluation.DatasetSpec(
        name="scenes", kind="scenes", num=1, seed=4, size=256, max_objects=8, family="clusters"
    )
    source = as_sample_sources([spec])["scenes"]
    types = ("noisy_box", "one_point")
    report = oracle_fit.ceiling_report(
        _demo_sam_with_dsp(), source, types, num_prompts=2, steps=2, progress=False
    )
    assert list(report) == list(oracle_fit.CEILING_ROWS)
    sam = oracle.oracle_report(
        oracle.oracle_model(_demo_sam_with_dsp()), source, types, 2, fields=(), progress=False
    )
    for prompt_type in types:
        assert report["none"][prompt_type] == {
            k: sam["none"][prompt_type][k] for k in ("miou", "msf")
        }
        assert report["mixture_c1"][prompt_type]["scale"] == 1.0
        for row in oracle_fit.FITTED_ROWS:
            cell = report[row][prompt_type]
            assert cell["loss_after"] < cell["loss_before"]
