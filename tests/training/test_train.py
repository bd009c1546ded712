"""End-to-end training in this process: the tiny config, non-finite losses, broken data."""

import importlib.util
import os

import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from PIL import Image
from train_helpers import REPO, read_metrics, tiny_config

from stablesam_jax import checkpoint as ckpt
from stablesam_jax import training
from stablesam_jax.builder import build_sam, build_stable_sam, save_plugins, save_sam
from stablesam_jax.data.folders import DataError
from stablesam_jax.data.scenes import write_scene_folder
from stablesam_jax.modeling.common import PluginParam


def test_tiny_trains_end_to_end_and_its_loss_goes_down(tmp_path):
    workdir = str(tmp_path / "run")
    config = tiny_config(total_steps=16, checkpoint_every_steps=8, log_every_steps=4)
    result = training.train(config, workdir)

    rows = read_metrics(workdir)
    assert [row["step"] for row in rows] == list(range(1, 17))
    losses = np.array([row["loss"] for row in rows])
    assert np.isfinite(losses).all()
    # Random decoder: logits near 0, BCE = log 2 = 0.69, dice ~0.95 on masks of a few percent.
    assert 1.4 < losses[0] < 1.9
    # Within a few steps it stops calling every pixel foreground-or-background at random.
    assert losses[-6:].mean() < losses[:2].mean() - 0.2, losses

    assert result["step"] == 16 and result["resumed_from"] is None
    assert result["metrics"]["loss"] == pytest.approx(losses[-1])
    assert result["images_per_second"] > 0
    assert 0 <= result["input_wait_fraction"] <= 1

    # Checkpoints at 8 and 16 (keep 2), a TensorBoard event file, the config.
    with ocp.CheckpointManager(result["checkpoint_dir"]) as manager:
        assert manager.all_steps() == [8, 16]
    assert any(
        name.startswith("events.") for name in os.listdir(os.path.join(workdir, "tensorboard"))
    )
    assert os.path.exists(os.path.join(workdir, "config.json"))

    # The export is a full SAM: the decoder moved, everything else bit-identical to the init.
    assert result["export_kind"] == "sam"
    exported = build_sam("vit_t", result["export"])
    initial = build_sam("vit_t", seed=config.model_seed)
    trained = ckpt.flat_weights(exported)
    before = ckpt.flat_weights(initial)
    assert trained.keys() == before.keys()
    returned = ckpt.flat_weights(result["model"])
    for name in trained:
        np.testing.assert_array_equal(trained[name], returned[name])
        if name.startswith("mask_decoder."):
            continue
        np.testing.assert_array_equal(trained[name], before[name], err_msg=name)
    moved = {
        n for n in trained if n.startswith("mask_decoder.") and (trained[n] != before[n]).any()
    }
    # Single-mask training without an IoU loss never reaches the IoU head or the three multimask
    # output MLPs (zero gradients, so Adam leaves them); everything else in the decoder moves.
    unreachable = ("mask_decoder.iou_prediction_head.",) + tuple(
        f"mask_decoder.output_hypernetworks_mlps.{i}." for i in (1, 2, 3)
    )
    reachable = {
        n for n in trained if n.startswith("mask_decoder.") and not n.startswith(unreachable)
    }
    assert moved == reachable, sorted(reachable ^ moved)[:10]


def test_rerun_of_a_finished_workdir_resumes_and_does_nothing(tmp_path):
    workdir = str(tmp_path / "run")
    config = tiny_config("prompt_tokens", total_steps=2, checkpoint_every_steps=0)
    first = training.train(config, workdir)
    again = training.train(config, workdir)
    assert again["resumed_from"] == 2
    assert [row["step"] for row in read_metrics(workdir)] == [1, 2]
    a, b = ckpt.flat_weights(first["model"]), ckpt.flat_weights(again["model"])
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    # A different recipe in the same workdir is refused, naming what changed.
    with pytest.raises(training.ConfigError, match="trainable"):
        training.train(tiny_config("decoder", total_steps=2), workdir)


def _folder_data(root, num=6, corrupt: int | None = None):
    pairs = write_scene_folder(root, "DUTS-TR", num, seed=5, size=128)
    if corrupt is not None:
        with open(pairs[corrupt][0], "wb") as f:
            f.write(b"\xff\xd8\xff\xe0 this is not a jpeg")
    return pairs


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    # Also: data from an image/mask folder pair, one corrupt file skipped and counted.
    pairs = _folder_data(tmp_path / "data", corrupt=2)
    workdir = str(tmp_path / "run")
    config = tiny_config(
        "plugins",
        total_steps=10,
        batch_size=2,
        checkpoint_every_steps=2,
        **{
            "debug.nan_at_step": 5,
            "data.source": "folders",
            "data.image_dir": str(pairs[0][0].parent),
            "data.mask_dir": str(pairs[0][1].parent),
            "data.skip_corrupt": True,
            "data.occlusion_prob": 0.0,
        },
    )
    with pytest.raises(training.NonFiniteLossError) as error:
        training.train(config, workdir)
    message = str(error.value)
    assert "step 5" in message and "learning rate" in message and "step 4" in message

    rows = read_metrics(workdir)
    assert [row["step"] for row in rows] == [1, 2, 3, 4]  # the NaN step is never logged
    # 6 records, batch 2, 4 steps: all records of epoch 0 read (plus a few of epoch 1).
    assert sum(row["num_corrupt_skipped"] for row in rows) >= 1
    with ocp.CheckpointManager(os.path.join(workdir, "checkpoints")) as manager:
        assert manager.latest_step() == 4
    # The last good state is intact: the export from step 4 loads and holds finite weights.
    model = build_stable_sam("vit_t", plugins=os.path.join(workdir, "export", "plugins"))
    plugins = ckpt.flat_weights(model, ckpt.is_plugin_weight)
    assert all(np.isfinite(v).all() for v in plugins.values())


def test_corrupt_file_stops_the_run_naming_it(tmp_path):
    pairs = _folder_data(tmp_path / "data", num=4, corrupt=1)
    config = tiny_config(
        "prompt_tokens",
        total_steps=4,
        batch_size=2,
        **{
            "data.source": "folders",
            "data.image_dir": str(pairs[0][0].parent),
            "data.mask_dir": str(pairs[0][1].parent),
        },
    )
    with pytest.raises(DataError, match=str(pairs[1][0].name)):
        training.train(config, str(tmp_path / "run"))


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(training.ConfigError, match="image_size"):
        training.validate_config(tiny_config(image_size=1024))
    with pytest.raises(training.ConfigError, match="data.root"):
        training.validate_config(tiny_config(**{"data.source": "hqseg44k"}))
    with pytest.raises(training.ConfigError, match="with_plugins"):
        training.validate_config(tiny_config("plugins", with_plugins=False))
    with pytest.raises(ValueError, match="trainable subset"):
        training.validate_config(tiny_config(trainable="encoder"))
    with pytest.raises(training.ConfigError, match="config.plugins: padding must be one of"):
        training.validate_config(tiny_config("plugins", **{"plugins.padding": "wrap"}))
    with pytest.raises(training.ConfigError, match="scene_family='dots'; choose from"):
        training.validate_config(tiny_config(**{"data.scene_family": "dots"}))


def test_image_masks_are_checked_for_existence(tmp_path):
    # A mask-less folder fails before any compilation, naming the folder.
    (tmp_path / "im").mkdir()
    (tmp_path / "gt").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "im" / "a.jpg")
    config = tiny_config(
        **{
            "data.source": "folders",
            "data.image_dir": str(tmp_path / "im"),
            "data.mask_dir": str(tmp_path / "gt"),
        }
    )
    with pytest.raises(DataError, match="no mask"):
        training.make_source(config)


@pytest.mark.parametrize(
    "name",
    ["tiny", "stable_sam_vit_l", "stable_sam_vit_l_12ep", "dt_sam_vit_l", "pt_sam_vit_l"],
)
def test_config_files_load_and_validate(name):
    path = os.path.join(REPO, "train", "configs", f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    assert "python -m stablesam_jax.train" in module.__doc__ and "Expected result" in module.__doc__
    if config.data.source == "hqseg44k":
        config.data.root = "/data/hqseg44k"
    training.validate_config(config)
    if name.startswith(("stable_sam", "dt_sam", "pt_sam")):
        # The paper's recipe (Sec. 4): global batch 32, Adam lr 1e-3, no weight decay.
        assert config.batch_size == 32 and config.optimizer.learning_rate == 1e-3
        assert config.optimizer.weight_decay == 0.0 and config.model_type == "vit_l"
    expected = {"dt_sam_vit_l": "decoder", "pt_sam_vit_l": "prompt_tokens"}.get(name)
    if expected:
        assert config.trainable == expected and not config.with_plugins


def test_build_model_reads_sam_and_init_checkpoints(tmp_path):
    sam = build_sam("vit_t", seed=7)
    save_sam(sam, str(tmp_path / "sam"))
    donor = build_stable_sam("vit_t", seed=0)
    for _, var in nnx.iter_graph(donor):
        if isinstance(var, PluginParam):
            var[...] = var[...] + 0.5  # distinguishable from a fresh init
    save_plugins(donor, str(tmp_path / "plugins"))

    config = tiny_config(
        "plugins",
        model_seed=0,
        sam_checkpoint=str(tmp_path / "sam"),
        init_checkpoint=str(tmp_path / "plugins"),
    )
    model = training.build_model(config)
    got_sam, want_sam = ckpt.flat_weights(model), ckpt.flat_weights(sam)
    assert got_sam.keys() == want_sam.keys()
    for name in want_sam:
        np.testing.assert_array_equal(got_sam[name], want_sam[name], err_msg=name)
    got = ckpt.flat_weights(model, ckpt.is_plugin_weight)
    want = ckpt.flat_weights(donor, ckpt.is_plugin_weight)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)

    # A SAM checkpoint as init_checkpoint of plain SAM (continuing a pretraining run).
    config = tiny_config("all", model_seed=0, init_checkpoint=str(tmp_path / "sam"))
    continued = ckpt.flat_weights(training.build_model(config))
    for name in want_sam:
        np.testing.assert_array_equal(continued[name], want_sam[name], err_msg=name)


@pytest.mark.parametrize("variant", [None, "stage2", "clusters"])
def test_demo_pretrain_variants_validate_and_draw_their_scene_family(variant):
    path = os.path.join(REPO, "train", "configs", "demo_pretrain.py")
    spec = importlib.util.spec_from_file_location("demo_pretrain", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(variant)
    training.validate_config(config)
    source = training.make_source(config)
    family = "clusters" if variant == "clusters" else "shapes"
    assert source.family == family and source[0]["name"].startswith(
        "clusters_" if family == "clusters" else "scene_"
    )
    assert config.trainable == "all" and not config.with_plugins
    with pytest.raises(ValueError, match="unknown variant 'stage3'"):
        module.get_config("stage3")
