"""The low-shot comparison's recipes (what each method trains, for how long) and its table."""

from __future__ import annotations

import pytest

from stablesam_jax import training
from stablesam_jax.demo import low_shot
from stablesam_jax.demo.settings import FULL, TRAIN_SCENE_SEED


@pytest.mark.parametrize(
    "method, model_type, trainable, plugins, hq",
    [
        ("PT-SAM", "vit_demo", "prompt_tokens", False, False),
        ("HQ-SAM", "hq_vit_demo", "hq", False, True),
        ("Stable-SAM", "vit_demo", "plugins", True, False),
    ],
)
def test_each_method_trains_its_own_subset_for_twelve_epochs(
    tmp_path, method, model_type, trainable, plugins, hq
):
    config = low_shot.method_config(FULL, str(tmp_path), method, 220)
    training.validate_config(config)
    assert (config.model_type, config.trainable, config.with_plugins) == (
        model_type,
        trainable,
        plugins,
    )
    assert config.hq_from_sam == hq and config.hq_token_only == hq
    assert config.num_epochs == 12.0 and tuple(config.optimizer.lr_drop_epochs) == (10.0,)
    assert config.data.num_scenes == 220 and config.data.scene_seed == TRAIN_SCENE_SEED
    # RTS for every method, as the paper's Table 7.
    assert dict(config.data.mixture) == dict(FULL.mixture)
    assert config.data.occlusion_prob == FULL.occlusion_prob


def test_fewer_epochs_drop_the_rate_at_the_same_fraction(tmp_path):
    config = low_shot.method_config(FULL, str(tmp_path), "HQ-SAM", 8, epochs=6)
    assert config.num_epochs == 6.0 and tuple(config.optimizer.lr_drop_epochs) == (5.0,)


def test_unknown_method_is_refused(tmp_path):
    with pytest.raises(ValueError, match="choose from"):
        low_shot.method_config(FULL, str(tmp_path), "DT-SAM", 220)


def test_table_has_one_row_per_model_with_three_metrics_per_prompt_type():
    results = {
        "SAM": {
            "noisy_box": {"miou": 50.0, "mbiou": 40.0, "msf": 30.0},
            "one_point": {"miou": 20.0, "mbiou": 10.0, "msf": 5.0},
        },
        "HQ-SAM (220)": {
            "noisy_box": {"miou": 61.25, "mbiou": 1.0, "msf": 2.0},
            "one_point": {"miou": 3.0, "mbiou": 4.0, "msf": 5.0},
        },
    }
    lines = low_shot.format_table(results).splitlines()
    assert lines[2] == "| SAM | 50.0 / 40.0 / 30.0 | 20.0 / 10.0 / 5.0 |"
    assert lines[3] == "| HQ-SAM (220) | 61.2 / 1.0 / 2.0 | 3.0 / 4.0 / 5.0 |"
    assert len(lines) == 4
