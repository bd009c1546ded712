"""The study's recipes (what each row trains and with which prompts), its two scene families and
its generality summary."""

from __future__ import annotations

import dataclasses

import pytest

from stablesam_jax import training
from stablesam_jax.commands import demo as demo_command
from stablesam_jax.data.scenes import SCENE_FAMILIES
from stablesam_jax.demo import recipes, study
from stablesam_jax.demo.pipeline import train_config
from stablesam_jax.demo.settings import EVAL_SCENE_SEED, FULL, TRAIN_SCENE_SEED


@pytest.mark.parametrize(
    "row, trainable, plugins, use_drp, rts",
    [
        ("DT-SAM", "decoder", False, True, True),
        ("PT-SAM", "prompt_tokens", False, True, True),
        ("DSP", "plugins", True, False, False),
        ("DSP + RTS", "plugins", True, False, True),
        ("Stable-SAM", "plugins", True, True, True),
    ],
)
def test_each_row_trains_its_subset_with_or_without_rts(
    tmp_path, row, trainable, plugins, use_drp, rts
):
    config = recipes.recipe_config(FULL, str(tmp_path), row)
    training.validate_config(config)
    assert (config.trainable, config.with_plugins) == (trainable, plugins)
    assert config.plugins.use_drp == use_drp
    assert config.data.scene_seed == TRAIN_SCENE_SEED and config.num_epochs == 1.0
    if rts:
        assert dict(config.data.mixture) == dict(FULL.mixture) and config.data.occlusion_prob > 0
    else:  # SAM's own prompts: tight boxes and several points, nothing occluded
        assert set(config.data.mixture) == {"gt_box", "three_points", "five_points", "ten_points"}
        assert config.data.occlusion_prob == 0.0


def test_stable_sam_row_is_the_main_demos_recipe(tmp_path):
    row = recipes.recipe_config(FULL, str(tmp_path), "Stable-SAM")
    assert row.to_dict() == train_config(FULL, str(tmp_path)).to_dict()


@pytest.mark.parametrize("family", ["clusters", "shapes"])
def test_generality_set_is_the_other_family_on_new_scenes(family):
    settings = dataclasses.replace(FULL, scene_family=family)
    specs = study.datasets(settings, 50)
    held_out, generality = specs["held-out"], specs["generality"]
    assert held_out.seed == EVAL_SCENE_SEED and held_out.num == FULL.eval_scenes
    assert held_out.family == family and generality.family != family
    assert generality.family in SCENE_FAMILIES
    # Pretraining uses scene seeds 1 and 5, plugin training 2, evaluation 3, selection 4.
    assert generality.seed not in (1, 2, 3, 4, 5) and generality.num == 50


def test_generality_lines_subtract_sams_miou_on_each_family():
    def family(sam, other):
        return {"SAM": {"one_point": {"miou": sam}}, "DT-SAM": {"one_point": {"miou": other}}}

    lines = study.generality_lines(family(40.0, 45.5), family(30.0, 20.0), "one_point")
    assert lines[1].split() == ["DT-SAM", "+5.5", "->", "-10.0"]


def test_study_and_low_shot_together_are_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        demo_command.main(["--study", "--low-shot", "--out", "/tmp/unused_study_out"])
    assert exit_info.value.code == 2
    assert "give one of them" in capsys.readouterr().err
