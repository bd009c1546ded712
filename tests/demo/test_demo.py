"""The demo: its quick mode end to end, its figures and the packaged demo SAM."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from stablesam_jax import demo, pretrained
from stablesam_jax.builder import build_stable_sam
from stablesam_jax.demo import figures
from stablesam_jax.demo.pipeline import drp_scales
from stablesam_jax.evaluation.read_swap import READ_SWAP_ROWS

PROMPT_TYPES = ("gt_box", "noisy_box", "one_point", "three_points")


# --------------------------------------------------------------------------------------------------
# Figures: pixels computed by hand


def test_overlay_blends_only_inside_the_mask():
    image = np.full((4, 5, 3), 100, np.uint8)
    mask = np.zeros((4, 5), bool)
    mask[1:3, 2:4] = True
    out = figures.overlay(image, mask, (200, 0, 40), alpha=0.5)
    # 100 * 0.5 + colour * 0.5
    np.testing.assert_array_equal(out[mask], np.tile([150, 50, 70], (4, 1)))
    np.testing.assert_array_equal(out[~mask], np.full((16, 3), 100))


def test_outline_paints_the_one_pixel_boundary_of_a_square():
    image = np.zeros((7, 7, 3), np.uint8)
    mask = np.zeros((7, 7), bool)
    mask[1:6, 1:6] = True  # 5x5 square: its boundary ring has 16 pixels, the inside 3x3
    out = figures.outline(image, mask, (9, 9, 9))
    painted = out[..., 0] == 9
    expected = mask.copy()
    expected[2:5, 2:5] = False
    np.testing.assert_array_equal(painted, expected)


def test_bar_chart_bar_heights_follow_the_values():
    chart = figures.bar_chart({"a": 1.0, "b": 0.5}, "t", y_max=1.0, size=(400, 300))
    pixels = np.asarray(chart)
    bar = np.all(pixels == figures.STABLE_COLOUR, axis=-1)
    columns = np.flatnonzero(bar.any(axis=0))
    # Two bars, left one twice as tall as the right one (plot area 60..250 px high = 190 px).
    left = bar[:, columns[0]].sum()
    right = bar[:, columns[-1]].sum()
    assert abs(left - 190) <= 2
    assert abs(right - 95) <= 2


def test_bar_chart_rejects_non_finite_values():
    with pytest.raises(ValueError, match="finite"):
        figures.bar_chart({"a": float("nan")}, "t")


def test_sampling_points_draws_circles_at_the_positions_with_area_by_weight():
    image = np.full((64, 64, 3), 255, np.uint8)
    positions = np.array([[40.0, 16.0], [40.0, 48.0]])  # (y, x) pixels, below the caption
    panel = figures.sampling_points(
        [{"image": image, "positions": positions, "weights": [0.9, 0.1], "title": "m"}],
        scale=2.0,
        top_k=2,
    )
    pixels = np.asarray(panel).astype(int)
    fill = (pixels[..., 0] > 240) & (pixels[..., 1] < 100) & (pixels[..., 2] < 100)
    labels, count = ndimage.label(fill)
    assert count == 2
    (big_y, big_x), (small_y, small_x) = (
        np.argwhere(labels == i).mean(axis=0)
        for i in sorted(range(1, 3), key=lambda i: -(labels == i).sum())
    )
    # Where the panel sits on the canvas is layout; the circles' relative geometry is not:
    # centres (40, 16) and (40, 48) at scale 2 are 64 px apart on one row.
    assert abs(small_x - big_x - 64) < 1.5 and abs(small_y - big_y) < 1.5
    # Area ~ weight: radii 18 and 18 * sqrt(0.1 / 0.9) = 6 px, area ratio 9.
    ratio = (labels == 1).sum() / (labels == 2).sum()
    ratio = max(ratio, 1 / ratio)
    # Small rasterized circles with outlines: area ~ r^2 gives 9; area ~ r would give 3.
    assert 6 < ratio < 13, ratio


def test_mask_comparison_has_one_row_per_example():
    image = np.zeros((40, 40, 3), np.uint8)
    gt = np.zeros((40, 40), bool)
    gt[10:30, 10:30] = True
    example = {
        "image": image,
        "gt": gt,
        "label": "x",
        "prompt": {"box": np.array([8, 8, 31, 31]), "point_coords": None},
        "sam_mask": gt,
        "stable_mask": gt,
        "sam_iou": 1.0,
        "stable_iou": 1.0,
    }
    one = figures.mask_comparison([example])
    two = figures.mask_comparison([example, example])
    assert two.width == one.width
    assert two.height - one.height == 40 + 6  # one more 40-px row and its padding


# --------------------------------------------------------------------------------------------------
# The packaged demo SAM


def test_npz_round_trip_stores_float16(tmp_path):
    flat = {"a.b": np.array([1.0, 1.0 + 2**-12, -3.5], np.float32), "n": np.arange(3)}
    path = pretrained.write_npz(tmp_path / "w.npz", flat, {"kind": "sam"})
    loaded, meta = pretrained.read_npz(path)
    assert meta["kind"] == "sam" and meta["stored_dtype"] == "float16"
    # 1 + 2**-12 is not a float16: it rounds to 1 (float16 keeps 10 fraction bits).
    np.testing.assert_array_equal(loaded["a.b"], [1.0, 1.0, -3.5])
    assert loaded["a.b"].dtype == np.float32
    np.testing.assert_array_equal(loaded["n"], [0, 1, 2])


def test_npz_refuses_values_beyond_float16(tmp_path):
    with pytest.raises(ValueError, match="float16"):
        pretrained.write_npz(tmp_path / "w.npz", {"w": np.array([1e6], np.float32)}, {})


def test_missing_weight_file_names_the_pretraining_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="demo_pretrain.py"):
        pretrained.read_npz(tmp_path / "missing.npz")


def test_a_checkpoint_directory_given_as_the_weight_file_says_how_to_load_it(tmp_path):
    with pytest.raises(IsADirectoryError, match=r"is a directory.*export_pretrained.*build_sam"):
        pretrained.build_demo_sam(tmp_path)


def test_packaged_demo_sam_is_small_and_loads_into_vit_demo():
    path = pretrained.DEMO_SAM_FILE
    assert path.is_file(), f"{path} is missing: {pretrained.PRETRAIN_COMMAND}"
    assert path.stat().st_size <= 20 * 2**20
    from stablesam_jax import checkpoint as ckpt

    model = pretrained.build_demo_sam()
    assert model.model_type == "vit_demo"
    loaded = ckpt.flat_weights(model, ckpt.is_sam_weight)
    with np.load(path) as raw:
        stored = {k: raw[k] for k in raw.files if k != pretrained.META_KEY}
    assert set(stored) == set(loaded)
    for name, value in stored.items():
        np.testing.assert_array_equal(loaded[name], value.astype(np.float32), err_msg=name)


# --------------------------------------------------------------------------------------------------
# The quick demo, as CI runs it


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    completed = subprocess.run(
        [sys.executable, "-m", "stablesam_jax.demo", "--out", str(out), "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return out, completed.stdout


def test_quick_demo_results_schema(quick_demo):
    out, _ = quick_demo
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"sam", "stable_sam"}
    for model in results.values():
        assert set(model) == set(PROMPT_TYPES)
        for values in model.values():
            assert set(values) == {"miou", "mbiou", "msf"}
            for value in values.values():
                assert isinstance(value, float) and math.isfinite(value)
                assert 0.0 <= value <= 100.0


def test_quick_demo_pretrained_sam_segments_with_a_tight_box(quick_demo):
    out, _ = quick_demo
    results = json.loads((out / "results.json").read_text())
    # A random-weight SAM scores near 0 here; the packaged one must have learned the task.
    assert results["sam"]["gt_box"]["miou"] > 50


def test_quick_demo_figures_open_with_sensible_sizes(quick_demo):
    out, _ = quick_demo
    for name in demo.FIGURE_FILES.values():
        with Image.open(out / name) as image:
            image.load()
            assert image.mode == "RGB"
            assert 300 <= image.width <= 4000 and 200 <= image.height <= 4000, image.size


def test_quick_demo_prints_the_table_and_writes_it(quick_demo):
    out, stdout = quick_demo
    assert "Stable-SAM" in stdout and "Noisy Box" in stdout
    assert (out / "results.md").read_text().count("|") > 10
    info = json.loads((out / "demo_info.json").read_text())
    assert set(info["drp_a1"]) == set(PROMPT_TYPES)
    assert Path(info["train"]["plugins"]).is_dir()
    (scale,) = info["drp_scale"].values()
    assert set(info["drp_scale"]) == {"layer1"} and scale != 1.0  # trained: Adam moved it
    assert f"DRP (softmax routing) scale s: layer1 {scale:.3f}" in stdout


def test_drp_scales_are_read_from_each_drp_block():
    model = build_stable_sam("vit_t", seed=0, dsp_layers=(0, 1))
    model.mask_decoder.transformer.layers[0].drp.scale[...] = 2.5
    assert drp_scales(model) == {"layer0": 2.5, "layer1": 1.0}
    assert drp_scales(build_stable_sam("vit_t", seed=0, use_drp=False)) == {}


def test_quick_demo_reports_the_dsp_diagnostics(quick_demo):
    out, stdout = quick_demo
    assert "Diagnostics of the DSP block" in stdout and "DSP offset fields on 2 images" in stdout
    info = json.loads((out / "demo_info.json").read_text())
    diagnostics = info["diagnostics"]
    assert set(diagnostics) == {"SAM", "Stable-SAM"}
    attention_keys = {
        "attn_target",
        "attn_target_grid",
        "attn_target_routed",
        "target_area",
        "value_shared",
    }
    offset_keys = {"offset_abs", "offset_std", "offset_saturated", "shared_fraction"}
    for model, by_type in diagnostics.items():
        assert set(by_type) == set(PROMPT_TYPES)
        for values in by_type.values():
            expected = attention_keys | (offset_keys if model == "Stable-SAM" else set())
            assert expected <= set(values), (model, sorted(values))
            for key in attention_keys:
                assert 0.0 <= values[key] <= 1.0, (model, key, values[key])
            if model == "SAM":
                assert values["attn_target"] == values["attn_target_grid"]
    # The DSP block's values at the cells are SAM's in both models (the plugin path computes them
    # its own way): the same share, whatever the plugins learned.
    for prompt_type, sam_values in diagnostics["SAM"].items():
        assert diagnostics["Stable-SAM"][prompt_type]["value_shared"] == pytest.approx(
            sam_values["value_shared"], abs=1e-4
        )
    paired = info["paired_offsets"]
    assert paired["images"] == 2
    for key in ("offset_abs", "noisy_box_vs_one_point", "noisy_box_vs_noisy_box"):
        assert math.isfinite(paired[key]) and paired[key] >= 0.0
    assert paired["noisy_box_across_images"] is not None
    swap = info["read_swap"]
    assert (swap["layer"], swap["scenes"]) == (1, 1)
    assert list(swap["miou"]) == list(READ_SWAP_ROWS)
    assert set(swap["miou"]["sam"]) == set(PROMPT_TYPES)
    for row in READ_SWAP_ROWS[1:]:
        assert set(swap["miou"][row]) == set(PROMPT_TYPES) - {"gt_box"}
    for cells in swap["miou"].values():
        assert all(0.0 <= v <= 100.0 for v in cells.values())
    assert "SAM's read swap, block 1" in stdout
