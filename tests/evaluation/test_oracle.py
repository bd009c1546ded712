"""The DSP oracle (`evaluation.oracle`): fields set from the ground truth, read by the DSP exactly,
scored with the evaluator's prompts; and the demo's `--oracle` run."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from stablesam_jax import SamPredictor, evaluation, pretrained
from stablesam_jax.commands import demo as demo_command
from stablesam_jax.data.prompts import mask_to_box
from stablesam_jax.data.scenes import SceneDataset
from stablesam_jax.demo.oracle import PLACEMENTS, RESULT_FILES, run_oracle
from stablesam_jax.demo.settings import QUICK
from stablesam_jax.evaluation import metrics, oracle
from stablesam_jax.evaluation.diagnostics import mask_on_grid
from stablesam_jax.evaluation.sources import as_sample_sources, load_with_prompts
from stablesam_jax.modeling.plugins import PluginConfig

# --------------------------------------------------------------------------------------------------
# Fields


def test_nearest_target_vectors_point_at_the_closest_target_cell():
    on = np.zeros((3, 4), bool)
    on[0, 0] = on[2, 3] = True
    vectors = oracle.nearest_target_vectors(on)
    assert vectors.shape == (3, 4, 2) and vectors.dtype == np.float32
    np.testing.assert_array_equal(vectors[0, 0], [0, 0])
    np.testing.assert_array_equal(vectors[2, 3], [0, 0])
    np.testing.assert_array_equal(vectors[0, 2], [0, -2])  # 2 from (0,0), sqrt(5) from (2,3)
    np.testing.assert_array_equal(vectors[2, 1], [0, 2])  # 2 from (2,3), sqrt(5) from (0,0)
    np.testing.assert_array_equal(vectors[1, 0], [-1, 0])


def test_target_cells_fall_back_to_the_largest_share_for_a_tiny_object():
    share = np.array([[0.0, 0.2], [0.4, 0.1]], np.float32)
    np.testing.assert_array_equal(oracle.target_cells(share), [[False, False], [True, False]])
    share[0, 0] = 0.6
    np.testing.assert_array_equal(oracle.target_cells(share), [[True, False], [False, False]])


def test_fields_of_each_kind_for_one_target_cell():
    share = np.zeros((3, 3), np.float32)
    share[0, 0] = 1.0
    rng = np.random.default_rng(0)
    onto = oracle.oracle_field("onto_target", share, 1.0, rng)
    np.testing.assert_array_equal(onto[2, 2], [-2, -2])
    toward = oracle.oracle_field("toward", share, 1.0, rng)
    np.testing.assert_allclose(toward[2, 2], [-(0.5**0.5), -(0.5**0.5)], rtol=1e-6)
    np.testing.assert_array_equal(toward[0, 1], [0, -1])  # within the limit: all the way
    np.testing.assert_array_equal(toward[0, 0], [0, 0])
    control = oracle.oracle_field("random_direction", share, 1.0, rng)
    np.testing.assert_allclose(
        np.linalg.norm(control, axis=-1), np.linalg.norm(toward, axis=-1), atol=1e-6
    )
    assert not np.allclose(control, toward)
    np.testing.assert_array_equal(oracle.oracle_field("none", share, 1.0, rng), 0.0)
    with pytest.raises(ValueError, match="unknown oracle field 'sideways'"):
        oracle.oracle_field("sideways", share, 1.0, rng)


def test_format_has_a_row_per_field():
    report = {
        "none": {"noisy_box": {"miou": 70.0, "msf": 60.04}},
        "toward": {"noisy_box": {"miou": 71.25, "msf": 61.0}},
    }
    lines = oracle.format_oracle_table(report, ["noisy_box"]).splitlines()
    assert lines[2] == "| none | 70.0 / 60.0 |" and lines[3] == "| toward | 71.2 / 61.0 |"


def test_box_cut_counts_split_the_target_at_the_box_edge():
    gt = np.zeros((6, 8), bool)
    gt[1:5, 1:7] = True  # 24 pixels, columns 1..6
    box = np.array([3.0, 0.0, 7.0, 5.0])  # columns 3..7: cuts off columns 1-2 (8 pixels)
    masks = np.zeros((2, 6, 8), bool)
    masks[0, 1:5, 3:8] = True  # the part in the box and column 7 (4 pixels of spill)
    masks[1, 1:5, 0:4] = True  # column 0 (4 spill), columns 1-2 (the cut), column 3 (4 kept)
    counts = metrics.box_cut_counts(masks, gt, box)
    assert [dict(zip(metrics.BOX_CUT_KEYS, row.tolist())) for row in counts] == [
        {"cut": 8, "cut_found": 0, "kept": 16, "kept_found": 16, "spill": 4},
        {"cut": 8, "cut_found": 8, "kept": 16, "kept_found": 4, "spill": 4},
    ]
    assert metrics.box_cut_summary(counts) == {
        "cut_share": pytest.approx(100 * 16 / 48),
        "recall_outside": pytest.approx(100 * 8 / 16),
        "recall_inside": pytest.approx(100 * 20 / 32),
        "spill": pytest.approx(100 * 8 / 48),
    }
    framed = metrics.box_cut_counts(masks[0], gt, [1, 1, 6, 4])
    assert metrics.box_cut_summary(framed)["recall_outside"] is None


def test_box_cut_table_shows_a_dash_where_nothing_was_cut():
    cut = {"cut_share": 0.0, "recall_outside": None, "recall_inside": 90.04, "spill": 5.0}
    report = {"none": {"noisy_box": {"miou": 1.0, "msf": 1.0, "box_cut": cut}}}
    lines = oracle.format_box_cut_table(report, "noisy_box").splitlines()
    assert lines[2] == "| none | 0.0 | - | 90.0 | 5.0 |"


# --------------------------------------------------------------------------------------------------
# The oracle model


@pytest.fixture(scope="module")
def scene():
    scene = SceneDataset(1, seed=4, size=256, max_objects=8, family="clusters")[0]
    return scene["image"], scene["masks"][0]


def _oracle_demo_sam(layers=(1,)):
    plugins = PluginConfig(use_drp=False, dsp_layers=layers)
    return oracle.oracle_model(pretrained.build_demo_sam(plugin_config=plugins))


def test_oracle_model_needs_dsp_without_drp():
    with pytest.raises(ValueError, match="no DRP"):
        oracle.oracle_model(pretrained.build_demo_sam(plugin_config=PluginConfig()))
    with pytest.raises(ValueError, match="DSP plugins"):
        oracle.oracle_model(pretrained.build_demo_sam())


def test_zero_field_is_sam_and_a_set_field_is_where_the_dsp_reads(scene):
    image, mask = scene
    box = mask_to_box(mask)
    sam = SamPredictor(pretrained.build_demo_sam())
    sam.set_image(image)
    _, _, sam_logits = sam.predict(box=box, multimask_output=False)

    predictor = SamPredictor(_oracle_demo_sam())
    predictor.set_image(image)
    _, _, zero_logits = predictor.predict(box=box, multimask_output=False)
    np.testing.assert_allclose(zero_logits, sam_logits, rtol=1e-5, atol=1e-5)

    field = np.zeros((16, 16, 2), np.float32)
    field[..., 0] = 1.5
    field[3, 4] = (-2.25, 0.5)
    oracle.set_offsets(predictor, field)
    _, _, moved_logits, inter = predictor.predict(
        box=box, multimask_output=False, return_intermediates=True
    )
    grid = np.stack(np.meshgrid(np.arange(16), np.arange(16), indexing="ij"), -1)
    np.testing.assert_allclose(inter["layer1/dsp_positions"].reshape(16, 16, 2), grid + field)
    assert np.abs(moved_logits - sam_logits).max() > 1e-3


def test_onto_target_reads_every_sample_inside_the_object(scene):
    image, mask = scene
    share = mask_on_grid(mask, 256, 16)
    field = oracle.oracle_field("onto_target", share, 4.0, np.random.default_rng(0))
    predictor = SamPredictor(_oracle_demo_sam())
    predictor.set_image(image)
    oracle.set_offsets(predictor, field)
    *_, inter = predictor.predict(
        box=mask_to_box(mask), multimask_output=False, return_intermediates=True
    )
    cells = inter["layer1/dsp_positions"].reshape(-1, 2)
    np.testing.assert_array_equal(cells, np.round(cells))
    y, x = cells.astype(int).T
    assert oracle.target_cells(share)[y, x].all()


def test_the_no_field_row_is_the_evaluators_sam():
    spec = evaluation.DatasetSpec(
        name="scenes", kind="scenes", num=2, seed=4, size=256, max_objects=8, family="clusters"
    )
    types = ("gt_box", "one_point")
    report = oracle.oracle_report(
        _oracle_demo_sam(),
        as_sample_sources([spec])["scenes"],
        types,
        3,
        0,
        fields=("onto_target",),
        progress=False,
    )
    assert list(report) == ["none", "onto_target"]
    evaluated = evaluation.evaluate_report(
        {"SAM": pretrained.build_demo_sam()}, [spec], types, 3, 0, progress=False
    )["results"][evaluation.POOLED]["SAM"]
    for prompt_type in types:
        for metric in ("miou", "msf"):
            assert report["none"][prompt_type][metric] == pytest.approx(
                evaluated[prompt_type][metric], abs=1e-3
            )
    assert "box_cut" not in report["none"]["one_point"]


def test_box_cut_of_the_no_field_row_counts_sams_masks_at_the_box_edge():
    spec = evaluation.DatasetSpec(
        name="scenes", kind="scenes", num=2, seed=4, size=256, max_objects=8, family="clusters"
    )
    source = as_sample_sources([spec])["scenes"]
    report = oracle.oracle_report(
        _oracle_demo_sam(), source, ("noisy_box",), 3, 0, fields=(), progress=False
    )
    sam = SamPredictor(pretrained.build_demo_sam())
    cut = found = kept = kept_found = spill = 0
    for index in range(len(source)):
        sample, prompts = load_with_prompts(source, index, ("noisy_box",), 3, 0)
        sam.set_image(sample.image)
        for prompt in prompts["noisy_box"]:
            mask = sam.predict(box=prompt["box"], multimask_output=False)[0][0]
            x0, y0, x1, y1 = np.asarray(prompt["box"]).reshape(4)
            inside = np.zeros_like(sample.mask)
            inside[
                int(np.ceil(y0)) : int(np.floor(y1)) + 1, int(np.ceil(x0)) : int(np.floor(x1)) + 1
            ] = True
            cut += np.sum(sample.mask & ~inside)
            found += np.sum(sample.mask & ~inside & mask)
            kept += np.sum(sample.mask & inside)
            kept_found += np.sum(sample.mask & inside & mask)
            spill += np.sum(mask & ~sample.mask)
    assert cut > 0
    summary = report["none"]["noisy_box"]["box_cut"]
    assert summary["cut_share"] == pytest.approx(100 * cut / (cut + kept))
    assert summary["recall_outside"] == pytest.approx(100 * found / cut)
    assert summary["recall_inside"] == pytest.approx(100 * kept_found / kept)
    assert summary["spill"] == pytest.approx(100 * spill / (cut + kept))


# --------------------------------------------------------------------------------------------------
# The demo's --oracle run


@pytest.fixture
def release_executables():
    """The run fits the ceiling (a decoder compiled under a loop per prompt signature); on the CPU
    each executable holds thousands of JIT memory maps, and one pytest process runs the whole
    suite under the kernel's map-count limit: drop them afterwards."""
    yield
    jax.clear_caches()


def test_demo_oracle_run_writes_a_table_per_placement(tmp_path, release_executables):
    settings = dataclasses.replace(QUICK, eval_scenes=1, num_prompts=2)
    run_oracle(tmp_path, settings)
    info = json.loads((tmp_path / RESULT_FILES["json"]).read_text())
    assert list(info["results"]) == list(PLACEMENTS)
    text = (tmp_path / RESULT_FILES["table"]).read_text()
    nones = []
    for name, report in info["results"].items():
        assert f"DSP in {name}:" in text
        assert list(report) == ["none", *oracle.ORACLE_FIELDS]
        for row in report.values():
            assert set(row) == set(settings.prompt_types)
            for cell in row.values():
                assert 0 <= cell["miou"] <= 100 and 0 <= cell["msf"] <= 100
        nones.append(report["none"])
    assert "noisy_box, where the masks fall against the box:" in text
    assert "gt_box, where the masks fall against the box:" in text
    assert "one_point, where" not in text
    cut = info["results"]["block 1 (paper)"]["none"]["noisy_box"]["box_cut"]
    assert set(cut) == {"cut_share", "recall_outside", "recall_inside", "spill"}
    # The ceiling runs on the same (single) scene: its SAM row is the oracle's.
    assert "The plugins' ceiling, DSP in block 1 (paper)" in text
    ceiling = info["ceiling"]["results"]
    assert list(ceiling) == ["none", "mixture_c1", "own_cell_free_c", "mixture_free_c"]
    for prompt_type, cell in ceiling["none"].items():
        for metric in ("miou", "msf"):
            assert cell[metric] == pytest.approx(nones[0][prompt_type][metric], abs=1e-3)
    # A DSP that reads every cell where it stands is SAM, wherever it sits.
    for none in nones[1:]:
        for prompt_type, cell in none.items():
            for metric in ("miou", "msf"):
                assert cell[metric] == pytest.approx(nones[0][prompt_type][metric], abs=1e-3)
            if "box_cut" in cell:
                assert cell["box_cut"] == nones[0][prompt_type]["box_cut"]


def test_oracle_with_another_run_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        demo_command.main(["--oracle", "--study", "--out", "/tmp/unused_oracle_out"])
    assert exit_info.value.code == 2
    assert "give one of them" in capsys.readouterr().err
