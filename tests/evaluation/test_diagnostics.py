"""The DSP block's diagnostics (stablesam_jax.evaluation.diagnostics): every statistic against
hand-built inputs whose answers are worked out in the comments, then the wiring through the
evaluation loop and its report."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from stablesam_jax import SamPredictor, build_sam, build_stable_sam, evaluation
from stablesam_jax.data.prompts import eval_prompts, image_seed
from stablesam_jax.data.scenes import generate_scene
from stablesam_jax.evaluation import diagnostics as dg
from stablesam_jax.evaluation.aggregate import DatasetScores, diagnostics_summaries

GRID = 4


def constant_field(dy, dx, grid=GRID):
    return jnp.broadcast_to(jnp.asarray([dy, dx], jnp.float32), (grid, grid, 2))


def sums_of(fields, valid=None):
    fields = jnp.stack(fields)
    valid = jnp.ones(len(fields), bool) if valid is None else jnp.asarray(valid)
    return dg.OffsetSums.from_arrays(dg.offset_sums(fields, valid))


# --------------------------------------------------------------------------------------------------
# Offset statistics


def test_a_global_shift_has_no_spatial_spread():
    stats = dg.offset_stats(constant_field(1.5, -2.0), offset_scale=4.0)
    assert float(stats["offset_abs"]) == pytest.approx(2.5)  # |(1.5, -2)| = 2.5 in every cell
    assert float(stats["offset_std"]) == pytest.approx(0.0, abs=1e-6)
    assert float(stats["offset_saturated"]) == 0.0  # 2.0 < 0.9 * 4


def test_spatial_std_of_a_split_field():
    # Left half dx = +1, right half dx = -1: mean (0, 0), every cell 1 away from it.
    field = np.zeros((GRID, GRID, 2), np.float32)
    field[:, : GRID // 2, 1], field[:, GRID // 2 :, 1] = 1.0, -1.0
    stats = dg.offset_stats(jnp.asarray(field), offset_scale=4.0)
    assert float(stats["offset_abs"]) == pytest.approx(1.0)
    assert float(stats["offset_std"]) == pytest.approx(1.0)


def test_saturation_counts_cells_with_a_component_at_nine_tenths_of_the_scale():
    field = np.zeros((GRID, GRID, 2), np.float32)
    field[0, 0] = (3.6, 0.0)  # exactly 0.9 * 4: counted
    field[0, 1] = (0.0, -3.9)  # either component, either sign
    field[0, 2] = (3.5, 3.5)  # norm 4.95 but no component reaches 3.6: not counted
    stats = dg.offset_stats(jnp.asarray(field), offset_scale=4.0)
    assert float(stats["offset_saturated"]) == pytest.approx(2 / GRID**2)


def test_offset_field_subtracts_the_cell_grid():
    ys, xs = np.meshgrid(np.arange(GRID), np.arange(GRID), indexing="ij")
    positions = np.stack([ys - 3.0, xs + 0.5], -1).astype(np.float32)
    np.testing.assert_allclose(dg.offset_field(jnp.asarray(positions)), constant_field(-3.0, 0.5))


def test_one_shift_for_every_example_is_fully_shared():
    summary = sums_of([constant_field(-3.0, -3.0)] * 5).summary()
    assert summary["shared_fraction"] == pytest.approx(1.0)
    assert summary["coherence"] == pytest.approx(1.0)
    assert summary["mean_vector_norm"] == pytest.approx(3.0 * math.sqrt(2.0))
    assert summary["mean_offset"] == pytest.approx([-3.0, -3.0])


def test_opposite_fields_share_nothing():
    summary = sums_of([constant_field(0.0, 2.0), constant_field(0.0, -2.0)]).summary()
    assert summary["shared_fraction"] == pytest.approx(0.0, abs=1e-9)
    assert summary["mean_vector_norm"] == pytest.approx(0.0, abs=1e-9)
    assert summary["coherence"] == pytest.approx(0.0, abs=1e-9)


def test_shared_fraction_of_a_common_shift_plus_per_example_parts():
    # d_1 = (3, 4), d_2 = (3, -4): mean field (3, 0), energy per cell 25: shared 9 / 25.
    summary = sums_of([constant_field(3.0, 4.0), constant_field(3.0, -4.0)]).summary()
    assert summary["shared_fraction"] == pytest.approx(9 / 25)
    assert summary["mean_vector_norm"] == pytest.approx(3.0)
    assert summary["coherence"] == pytest.approx(3 / 5)


def test_padding_rows_and_merging():
    padded = sums_of([constant_field(1.0, 0.0), constant_field(50.0, 50.0)], valid=[True, False])
    assert padded.count == 1
    merged = padded + sums_of([constant_field(-1.0, 0.0)])
    assert merged.count == 2
    assert merged.summary()["shared_fraction"] == pytest.approx(0.0, abs=1e-9)


def test_zero_offsets_have_undefined_sharing():
    summary = sums_of([constant_field(0.0, 0.0)] * 2).summary()
    assert math.isnan(summary["shared_fraction"]) and math.isnan(summary["coherence"])
    assert summary["mean_vector_norm"] == 0.0


# --------------------------------------------------------------------------------------------------
# Attention on target


def column_mask():
    mask = np.zeros((GRID, GRID), np.float32)
    mask[:, GRID - 1] = 1.0  # the last column: a quarter of the cells
    return jnp.asarray(mask)


def cell_positions(dx_of_column):
    ys, xs = np.meshgrid(np.arange(GRID), np.arange(GRID), indexing="ij")
    xs = xs + np.asarray([dx_of_column(x) for x in range(GRID)])[None, :]
    return jnp.asarray(np.stack([ys, xs], -1).reshape(-1, 2), jnp.float32)


def uniform_attention(heads=2, tokens=3):
    return jnp.full((heads, tokens, GRID * GRID), 1.0 / GRID**2)


def test_attention_on_target_rises_as_the_field_points_at_the_mask():
    attention, mask = uniform_attention(), column_mask()
    still = dg.attention_on_target(attention, cell_positions(lambda x: 0.0), mask)
    # Half-way to column 3: columns 0..3 sample x = 0 + 1.5, 1 + 1, 2 + 0.5, 3 + 0, where the
    # mask is 0, 0, 0.5, 1: mean 0.375.
    halfway = dg.attention_on_target(attention, cell_positions(lambda x: (3 - x) / 2), mask)
    there = dg.attention_on_target(attention, cell_positions(lambda x: 3.0 - x), mask)
    assert float(still) == pytest.approx(0.25)  # uniform attention: the mask's area
    assert float(halfway) == pytest.approx(0.375)
    assert float(there) == pytest.approx(1.0)


def test_attention_uses_the_output_token_and_the_mean_over_heads():
    attention = np.zeros((2, 3, GRID * GRID), np.float32)
    attention[:, 0, GRID - 1] = 1.0  # the IoU token, all on a mask cell: must not count
    attention[0, 1, GRID - 1] = 1.0  # output token, head 0: on the mask (cell (0, 3))
    attention[1, 1, 0] = 1.0  # head 1: off the mask (cell (0, 0))
    attention[:, 2, 0] = 1.0
    value = dg.attention_on_target(
        jnp.asarray(attention), cell_positions(lambda x: 0.0), column_mask()
    )
    assert float(value) == pytest.approx(0.5)


def test_the_mask_is_sampled_bilinearly_with_zeros_outside():
    ones = jnp.ones((GRID, GRID))
    positions = jnp.asarray([[0.0, -0.5], [1.0, 1.25], [GRID - 0.75, 0.0], [2.0, -1.0]])
    np.testing.assert_allclose(dg.sample_grid(ones, positions), [0.5, 1.0, 0.75, 0.0])


def test_example_diagnostics_without_dsp_use_the_cells():
    mask = column_mask()
    out = dg.example_diagnostics(uniform_attention(), None, mask, None)
    assert set(out) == {"attn_target", "attn_target_grid", "attn_target_routed", "target_area"}
    assert float(out["attn_target"]) == float(out["attn_target_grid"]) == pytest.approx(0.25)
    assert float(out["attn_target_routed"]) == pytest.approx(0.25)
    assert float(out["target_area"]) == pytest.approx(0.25)


def test_value_shared_fraction_of_hand_made_values():
    v = jnp.asarray([3.0, 4.0])
    assert float(dg.value_shared_fraction(jnp.stack([v] * 4))) == pytest.approx(1.0)
    assert float(dg.value_shared_fraction(jnp.stack([v, -v] * 2))) == pytest.approx(0.0)
    # Half the positions hold v, half nothing: |v / 2|^2 / (|v|^2 / 2) = 0.5.
    half = jnp.stack([v, jnp.zeros(2)] * 2)
    assert float(dg.value_shared_fraction(half)) == pytest.approx(0.5)


def test_decode_diagnostics_report_the_values_shared_fraction():
    values = jnp.stack([jnp.ones((GRID * GRID, 4)), jnp.tile(jnp.asarray([[1.0], [-1.0]]), (8, 4))])
    intermediates = {
        "layer1/token_to_image_attn": jnp.stack([uniform_attention()] * 2),
        "layer1/token_to_image_values": values,
    }
    out = dg.decode_diagnostics(intermediates, column_mask(), 2, layer=1, offset_scale=None)
    np.testing.assert_allclose(out["per_example"]["value_shared"], [1.0, 0.0], atol=1e-6)
    assert "sums" not in out


def test_decode_diagnostics_over_a_padded_batch():
    positions = cell_positions(lambda x: 3.0 - x).reshape(GRID, GRID, 2)
    intermediates = {
        "layer1/token_to_image_attn": jnp.stack([uniform_attention()] * 3),
        "layer1/dsp_positions": jnp.stack([positions] * 3),
    }
    out = dg.decode_diagnostics(intermediates, column_mask(), 2, layer=1, offset_scale=4.0)
    np.testing.assert_allclose(out["per_example"]["attn_target"], [1.0] * 3, rtol=1e-6)
    np.testing.assert_allclose(out["per_example"]["attn_target_grid"], [0.25] * 3, rtol=1e-6)
    # Offsets 3, 2, 1, 0 cells in x per column: mean |d| 1.5, 0.9 * 4 = 3.6 reached by none.
    np.testing.assert_allclose(out["per_example"]["offset_abs"], [1.5] * 3, rtol=1e-6)
    assert int(out["sums"]["count"]) == 2
    # Without DRP every key is its sampled feature.
    np.testing.assert_allclose(out["per_example"]["attn_target_routed"], [1.0] * 3, rtol=1e-6)


def test_routed_attention_splits_each_key_as_drp_mixes_its_features():
    positions = cell_positions(lambda x: 3.0 - x).reshape(GRID, GRID, 2)  # all onto the column
    alpha = jnp.asarray([[0.2, 0.6], [1.0, 0.0], [0.0, 0.5]])  # a1 + a2 need not be 1 (scale s)
    intermediates = {
        "layer1/token_to_image_attn": jnp.stack([uniform_attention()] * 3),
        "layer1/dsp_positions": jnp.stack([positions] * 3),
        "layer1/drp_alpha": alpha,
    }
    out = dg.decode_diagnostics(intermediates, column_mask(), 3, layer=1, offset_scale=4.0)
    # sampled 1.0 (every key samples the target column), own cells 0.25 (one column of four):
    # (0.2 * 1 + 0.6 * 0.25) / 0.8; all sampled; all own cells.
    np.testing.assert_allclose(
        out["per_example"]["attn_target_routed"], [0.4375, 1.0, 0.25], rtol=1e-6
    )
    np.testing.assert_allclose(out["per_example"]["attn_target"], [1.0] * 3, rtol=1e-6)


# --------------------------------------------------------------------------------------------------
# The GT mask on the embedding grid


def test_mask_on_grid_resizes_the_long_side_and_pads_bottom_right():
    mask = np.ones((16, 32), bool)  # wide: resized to 32 x 64, padded at the bottom to 64 x 64
    grid = dg.mask_on_grid(mask, img_size=64, grid=GRID)
    np.testing.assert_array_equal(grid, [[1, 1, 1, 1], [1, 1, 1, 1], [0] * 4, [0] * 4])


def test_mask_on_grid_averages_each_patch():
    mask = np.zeros((16, 32), bool)
    mask[:, :16] = (
        True  # left half; x2 bilinear upscaling blurs output columns 31 (0.75), 32 (0.25)
    )
    grid = dg.mask_on_grid(mask, img_size=64, grid=GRID)
    np.testing.assert_allclose(grid[:2, 0], 1.0)
    np.testing.assert_allclose(grid[:2, 1], 15.75 / 16, atol=2e-3)
    np.testing.assert_allclose(grid[:2, 2], 0.25 / 16, atol=2e-3)
    np.testing.assert_allclose(grid[:2, 3], 0.0)
    np.testing.assert_allclose(grid[2:], 0.0)


def test_mask_on_grid_rejects_bad_shapes():
    with pytest.raises(ValueError, match="divisible"):
        dg.mask_on_grid(np.ones((8, 8), bool), img_size=64, grid=5)


# --------------------------------------------------------------------------------------------------
# Aggregation, the loop and the report


def test_pooled_sharing_comes_from_the_union_of_datasets():
    per_image, offset_sums = {}, {}
    for name, dx in (("a", 2.0), ("b", -2.0)):
        scores = DatasetScores(1, ["M"], ["one_point"])
        scores.names[0] = "x"
        values = {"miou": 1.0, "mbiou": 1.0, "msf": 1.0, "attn_target": 0.5 + dx / 10}
        values[dg.SUMS_KEY] = sums_of([constant_field(0.0, dx)])
        scores.queue(lambda v=values: v, "M", "one_point", 0, limit=0)
        per_image[name], offset_sums[name] = scores.per_image(), scores.offset_sums
    out = diagnostics_summaries(per_image, offset_sums, ["M"], ["one_point"])
    assert out["a"]["M"]["one_point"]["shared_fraction"] == pytest.approx(1.0)
    assert out["pooled"]["M"]["one_point"]["shared_fraction"] == pytest.approx(0.0, abs=1e-9)
    assert out["pooled"]["M"]["one_point"]["attn_target"] == pytest.approx(0.5)  # 0.7, 0.3


def non_square_sample():
    scene = generate_scene(3, size=256)  # its largest object covers 18% of the image
    image = np.ascontiguousarray(scene["image"][20:220, 10:160])  # tall: padded at the right
    instances = scene["masks"][:, 20:220, 10:160]
    return image, instances[np.argmax(instances.sum(axis=(1, 2)))]


def test_the_loop_reads_the_output_token_of_the_dsp_block_and_identity_plugins_change_nothing():
    """SAM's attention on target against `SamPredictor`'s intermediates one prompt at a time; a
    fresh Stable-SAM equals its SAM (docs/design.md, Stable-SAM as built), so its offsets are 0
    and its attention on the target is SAM's."""
    sam, stable = build_sam("vit_t", seed=0), build_stable_sam("vit_t", seed=0)
    image, mask = non_square_sample()
    num, seed = 3, 2
    report = evaluation.evaluate_report(
        {"SAM": sam, "Stable-SAM": stable},
        {"d": [(image, mask, "s0")]},
        ("noisy_box",),
        num,
        seed,
        progress=False,
    )
    predictor = SamPredictor(sam)
    predictor.set_image(image)
    on_grid = dg.mask_on_grid(mask, sam.img_size, sam.config.image_embedding_size).ravel()
    expected = []
    for prompt in eval_prompts(mask, "noisy_box", num, image_seed("s0", seed)):
        *_, inter = predictor.predict(
            box=prompt["box"], multimask_output=False, return_intermediates=True
        )
        weights = np.asarray(inter["layer1/token_to_image_attn"])[:, 1].mean(axis=0)  # no batch
        expected.append(np.sum(weights * on_grid))
    per_image = report["per_image"]["d"]["values"]
    assert per_image["SAM"]["noisy_box"]["attn_target"][0] == pytest.approx(
        np.mean(expected), rel=1e-4
    )

    pooled = report["diagnostics"]["pooled"]
    ours, theirs = pooled["Stable-SAM"]["noisy_box"], pooled["SAM"]["noisy_box"]
    assert "offset_abs" not in theirs and ours["offset_abs"] == 0.0
    assert ours["attn_target"] == pytest.approx(theirs["attn_target"], rel=1e-4)
    assert math.isnan(ours["shared_fraction"])
    assert ours["value_shared"] == pytest.approx(theirs["value_shared"], rel=1e-4)
    assert 0.0 < theirs["value_shared"] < 1.0
    section = evaluation.format_table(report).split("Diagnostics of the DSP block")[1]
    rows = [line for line in section.splitlines() if line.startswith("| Stable-SAM |")]
    # attention sampled / routed / area / values' shared fraction ; |offset| 0.00 / std 0.00 /
    # shared fraction undefined / a1 of the fresh DRP
    assert len(rows) == 1 and rows[0].count(" / ") == 6 and rows[0].count(" ; ") == 1
    assert " ; 0.00 / 0.00 / - / " in rows[0]


def test_mean_field_distance_averages_the_norm_over_every_cell():
    a = np.zeros((2, 1, 2, 2))
    b = a.copy()
    b[0, 0, 0] = (3.0, 4.0)  # one cell of four 5 cells apart
    assert dg.mean_field_distance(a, b) == pytest.approx(1.25)
    assert dg.mean_field_distance(b, b) == 0.0
