"""HQ-SAM and TinyViT (MobileSAM) checkpoints: the completeness proof on every released size, the
CLI with --verify, `build_sam` on a .pth and the automatic mask generator against the official
HQ package."""

import pytest

pytest.importorskip("torch")  # without torch (CI's Python 3.12 lane): skipped, not an error

import os
import subprocess
import sys

import numpy as np
import torch
from flax import nnx
from hq_pairs import make_hq_pair
from sam_pairs import rel_err

from stablesam_jax import SamAutomaticMaskGenerator, build_sam
from stablesam_jax.convert import check_conversion, dropped_keys
from stablesam_jax.modeling import SAM_VARIANTS
from stablesam_jax.tools.official_hq import build_official_hq_sam, import_official_hq

pytestmark = pytest.mark.torch_reference


def official_shapes(model_type):
    config = SAM_VARIANTS[model_type]
    # TinyViT's constructor reads values (`.item()`), which a meta tensor cannot give; it is small.
    device = "cpu" if config.tiny_vit else "meta"
    with torch.device(device):
        torch_sam = build_official_hq_sam(config)
    return {k: tuple(v.shape) for k, v in torch_sam.state_dict().items()}


# hq_vit_l / hq_vit_h: the same modules as hq_vit_b at other widths.
@pytest.mark.parametrize("model_type", ["hq_vit_b", "vit_tiny", "hq_vit_tiny"])
def test_conversion_plan_is_complete_for_released_sizes(model_type):
    shapes = official_shapes(model_type)
    abstract = nnx.eval_shape(lambda: build_sam(model_type))
    plan = check_conversion(shapes, abstract)
    dropped = dropped_keys(shapes, abstract)
    assert set(plan) | set(dropped) == set(shapes) and not set(plan) & set(dropped)
    if SAM_VARIANTS[model_type].tiny_vit:
        assert set(dropped) == {
            k
            for k in shapes
            if k.startswith(("image_encoder.head.", "image_encoder.norm_head."))
            or k.endswith("num_batches_tracked")
        }
        assert len(dropped) > 4
    else:
        assert not dropped


def test_cli_converts_and_verifies_hq(repo_root, tmp_path):
    torch_sam, _, _ = make_hq_pair(SAM_VARIANTS["hq_vit_t"], seed=3)
    pth = tmp_path / "sam_hq_vit_t.pth"
    torch.save(torch_sam.state_dict(), pth)
    out = tmp_path / "ckpt"
    script = os.path.join(repo_root, "convert", "torch_to_flax.py")
    args = ["--model-type", "hq_vit_t", "--checkpoint", str(pth), "--output", str(out)]
    r = subprocess.run(
        [sys.executable, script, *args, "--verify"], capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr
    assert "every source key used, every target filled, every shape equal" in r.stdout
    diffs = {
        line.split()[1]: float(line.split()[-1])
        for line in r.stdout.splitlines()
        if line.startswith("verify")
    }
    assert "logits_hq_token_only_rel_max_diff:" in diffs
    assert len(diffs) == 5 and max(diffs.values()) < 1e-4, diffs
    # build_sam takes the official .pth directly, with the same weights.
    ours = build_sam("hq_vit_t", checkpoint=str(pth))
    x = np.random.default_rng(0).standard_normal((1, 256, 256, 3)).astype(np.float32)
    with torch.no_grad():
        ref, _ = torch_sam.image_encoder(torch.from_numpy(x.transpose(0, 3, 1, 2)))
    assert rel_err(ref.numpy().transpose(0, 2, 3, 1), ours.image_encoder(x)[..., :256]) <= 1e-4


def test_automatic_mask_generator_matches_official_hq():
    """One mask per point (HQ-SAM's multimask output), filters and NMS off so every candidate counts."""
    torch_sam, ours, _ = make_hq_pair(SAM_VARIANTS["hq_vit_t"], seed=4)
    image = (np.random.default_rng(5).random((120, 90, 3)) * 255).astype(np.uint8)
    options = dict(
        points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0
    )
    official = import_official_hq().SamAutomaticMaskGenerator(torch_sam, **options)
    ref = sorted(official.generate(image), key=lambda r: -r["predicted_iou"])
    got = sorted(
        SamAutomaticMaskGenerator(ours, **options).generate(image),
        key=lambda r: -r["predicted_iou"],
    )
    assert len(got) == len(ref) > 1
    ref_iou = np.array([r["predicted_iou"] for r in ref])
    assert rel_err(ref_iou, np.array([r["predicted_iou"] for r in got])) <= 1e-4
    for r, g in zip(ref, got):
        assert (r["segmentation"] == g["segmentation"]).mean() > 0.999
        assert r["point_coords"] == g["point_coords"]
