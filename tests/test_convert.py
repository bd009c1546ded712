"""The converter: completeness on every size, clear failures on bad input, and full-size vit_b
parity end to end through the CLI and SamPredictor."""

import pytest

pytest.importorskip("torch")  # without torch (CI's Python 3.12 lane): skipped, not an error

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from flax import nnx
from sam_pairs import rel_err

from stablesam_jax import build_sam, build_stable_sam
from stablesam_jax.builder import save_plugins
from stablesam_jax.checkpoint import CheckpointError
from stablesam_jax.convert import ConversionError, check_conversion
from stablesam_jax.modeling import SAM_VARIANTS
from stablesam_jax.tools.official import build_official_sam, randomize_

pytestmark = pytest.mark.torch_reference


def run_cli(repo_root, *args):
    return subprocess.run(
        [sys.executable, os.path.join(repo_root, "convert", "torch_to_flax.py"), *args],
        capture_output=True,
        text=True,
        timeout=600,
    )


def convert_vit_t(repo_root, checkpoint, output):
    """The CLI on a vit_t checkpoint (the bad-input cases)."""
    return run_cli(
        repo_root, "--model-type", "vit_t", "--checkpoint", str(checkpoint), "--output", str(output)
    )


def official_shapes(model_type):
    with torch.device("meta"):
        torch_sam = build_official_sam(SAM_VARIANTS[model_type])
    return {k: tuple(v.shape) for k, v in torch_sam.state_dict().items()}


@pytest.mark.parametrize("model_type", ["vit_b", "vit_l", "vit_h"])
def test_conversion_plan_is_complete_for_released_sizes(model_type):
    shapes = official_shapes(model_type)
    abstract = nnx.eval_shape(lambda: build_sam(model_type))
    plan = check_conversion(shapes, abstract)
    assert set(plan) == set(shapes)  # every source key used, every target filled
    # Learnable parameters (the gaussian PE matrix is a buffer) against SAM's published counts.
    n = sum(int(np.prod(s)) for k, s in shapes.items() if "gaussian" not in k)
    expected = {"vit_b": 93_735_472, "vit_l": 312_342_832, "vit_h": 641_090_608}[model_type]
    assert n == expected


def test_vit_l_weights_into_vit_b_name_keys_and_shapes():
    abstract = nnx.eval_shape(lambda: build_sam("vit_b"))
    with pytest.raises(ConversionError) as e:
        check_conversion(official_shapes("vit_l"), abstract, source="sam_vit_l.pth")
    msg = str(e.value)
    assert "unexpected keys: image_encoder.blocks.12." in msg
    assert (
        "image_encoder.patch_embed.proj.weight: checkpoint (1024, 3, 16, 16) vs expected "
        "(768, 3, 16, 16)" in msg
    )
    assert "try --model-type vit_l" in msg


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    torch_sam = build_official_sam(SAM_VARIANTS["vit_t"])
    randomize_(torch_sam, 1)
    path = tmp_path_factory.mktemp("pth") / "sam_vit_t.pth"
    torch.save(torch_sam.state_dict(), path)
    return str(path), torch_sam


def test_cli_converts_and_verifies(repo_root, tiny_checkpoint, tmp_path):
    pth, _ = tiny_checkpoint
    out = tmp_path / "ckpt"
    r = run_cli(
        repo_root, "--model-type", "vit_t", "--checkpoint", pth, "--output", str(out), "--verify"
    )
    assert r.returncode == 0, r.stderr
    assert "every source key used, every target filled, every shape equal" in r.stdout
    diffs = [float(line.split()[-1]) for line in r.stdout.splitlines() if line.startswith("verify")]
    assert len(diffs) == 3 and max(diffs) < 1e-4
    # An existing output is not overwritten silently.
    r = run_cli(repo_root, "--model-type", "vit_t", "--checkpoint", pth, "--output", str(out))
    assert r.returncode == 2 and "pass --force" in r.stderr


def test_cli_accepts_nested_state_dicts(repo_root, tiny_checkpoint, tmp_path):
    _, torch_sam = tiny_checkpoint
    for nest in ("model", "state_dict"):
        path = tmp_path / f"{nest}.pth"
        torch.save({nest: torch_sam.state_dict(), "epoch": 3}, path)
        r = run_cli(
            repo_root,
            "--model-type",
            "vit_t",
            "--checkpoint",
            str(path),
            "--output",
            str(tmp_path / f"out_{nest}"),
        )
        assert r.returncode == 0, r.stderr


def test_cli_wrong_model_type(repo_root, tiny_checkpoint, tmp_path):
    pth, _ = tiny_checkpoint
    r = run_cli(
        repo_root, "--model-type", "vit_demo", "--checkpoint", pth, "--output", str(tmp_path / "x")
    )
    assert r.returncode == 2
    assert "missing keys: image_encoder.blocks.2." in r.stderr
    assert (
        "image_encoder.patch_embed.proj.weight: checkpoint (64, 3, 16, 16) vs expected "
        "(128, 3, 16, 16)" in r.stderr
    )
    assert "try --model-type vit_t" in r.stderr
    assert not (tmp_path / "x").exists()


def test_cli_truncated_file(repo_root, tiny_checkpoint, tmp_path):
    pth, _ = tiny_checkpoint
    data = open(pth, "rb").read()
    path = tmp_path / "truncated.pth"
    path.write_bytes(data[: len(data) // 2])
    r = convert_vit_t(repo_root, path, tmp_path / "x")
    assert r.returncode == 2
    assert "truncated or corrupt" in r.stderr and str(path) in r.stderr


def test_cli_not_a_checkpoint(repo_root, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("these are not weights\n")
    r = convert_vit_t(repo_root, path, tmp_path / "x")
    assert r.returncode == 2 and str(path) in r.stderr
    assert "truncated or corrupt" in r.stderr or "not a PyTorch checkpoint" in r.stderr
    r = convert_vit_t(repo_root, tmp_path / "missing.pth", tmp_path / "x")
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_cli_missing_and_extra_keys(repo_root, tiny_checkpoint, tmp_path):
    _, torch_sam = tiny_checkpoint
    sd = dict(torch_sam.state_dict())
    del sd["mask_decoder.iou_token.weight"]
    sd["mask_decoder.hq_token.weight"] = torch.zeros(1, 256)
    path = tmp_path / "edited.pth"
    torch.save(sd, path)
    r = convert_vit_t(repo_root, path, tmp_path / "x")
    assert r.returncode == 2
    assert "1 missing keys: mask_decoder.iou_token.weight" in r.stderr
    assert "1 unexpected keys: mask_decoder.hq_token.weight" in r.stderr


def test_build_sam_rejects_wrong_checkpoints(tmp_path, tiny_checkpoint, repo_root):
    pth, _ = tiny_checkpoint
    # build_sam reads a .pth itself (tests/test_torch_surface.py); plugins= wants a directory.
    with pytest.raises(CheckpointError, match="is a file, not a converted checkpoint directory"):
        build_stable_sam("vit_t", plugins=pth)
    with pytest.raises(CheckpointError, match="does not exist"):
        build_sam("vit_t", checkpoint=str(tmp_path / "nope"))
    out = tmp_path / "ckpt"
    assert (
        run_cli(
            repo_root, "--model-type", "vit_t", "--checkpoint", pth, "--output", str(out)
        ).returncode
        == 0
    )
    with pytest.raises(CheckpointError, match="holds vit_t weights"):
        build_sam("vit_demo", checkpoint=str(out))
    plugins = save_plugins(build_stable_sam("vit_t"), str(tmp_path / "plugins"))
    with pytest.raises(CheckpointError, match="'plugins' checkpoint"):
        build_sam("vit_t", checkpoint=plugins)
    with pytest.raises(CheckpointError, match="'sam' checkpoint"):
        build_stable_sam("vit_t", checkpoint=str(out), plugins=str(out))


@pytest.mark.slow
def test_vit_b_full_size_parity_through_cli_and_predictor(repo_root, tmp_path):
    """Randomized official vit_b -> .pth -> CLI -> build_sam -> SamPredictor vs the official
    SamPredictor on a non-square image with box, points and a mask input."""
    from segment_anything import SamPredictor as OfficialPredictor

    from stablesam_jax import SamPredictor

    torch_sam = build_official_sam(SAM_VARIANTS["vit_b"])
    randomize_(torch_sam, 2, std=0.02)
    pth = tmp_path / "sam_vit_b_random.pth"
    torch.save(torch_sam.state_dict(), pth)
    out = tmp_path / "sam_vit_b"
    r = run_cli(repo_root, "--model-type", "vit_b", "--checkpoint", str(pth), "--output", str(out))
    assert r.returncode == 0, r.stderr
    pth.unlink()
    ours = build_sam("vit_b", checkpoint=str(out))

    image = (np.random.default_rng(11).random((480, 640, 3)) * 255).astype(np.uint8)
    official, predictor = OfficialPredictor(torch_sam), SamPredictor(ours)
    official.set_image(image)
    predictor.set_image(image)
    diffs = {"embedding": rel_err(official.get_image_embedding(), predictor.get_image_embedding())}
    box = np.array([100, 80, 420, 400.0])
    points, labels = np.array([[200, 200], [350, 300.0], [120, 420]]), np.array([1, 1, 0])
    _, _, low_res = official.predict(box=box, multimask_output=False)
    for name, kwargs in {
        "box": dict(box=box),
        "points": dict(point_coords=points, point_labels=labels),
        "points+box+mask": dict(
            point_coords=points, point_labels=labels, box=box, mask_input=low_res
        ),
    }.items():
        ref = official.predict(**kwargs, return_logits=True)
        got = predictor.predict(**kwargs, return_logits=True)
        diffs[f"{name} logits"] = rel_err(ref[0], got[0])
        diffs[f"{name} iou"] = rel_err(ref[1], got[1])
        diffs[f"{name} low-res"] = rel_err(ref[2], got[2])
    print("vit_b parity (max rel diff):", {k: f"{v:.2e}" for k, v in diffs.items()})
    assert max(diffs.values()) <= 1e-4, diffs
