"""`python -m stablesam_jax.predict`: a user's own image, and clear errors for bad input."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from stablesam_jax import build_sam, build_stable_sam
from stablesam_jax.builder import save_plugins, save_sam


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    image = np.zeros((120, 160, 3), np.uint8)
    image[30:90, 40:120] = (200, 60, 60)
    Image.fromarray(image).save(root / "image.png")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    sam = save_sam(build_sam("vit_t", seed=0), str(root / "sam"))
    plugins = save_plugins(build_stable_sam("vit_t", seed=0), str(root / "plugins"))
    return root, sam, plugins


def run(*args):
    return subprocess.run(
        [sys.executable, "-m", "stablesam_jax.predict", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_predict_writes_overlay_and_mask(files):
    root, sam, plugins = files
    r = run(
        str(root / "image.png"),
        "--checkpoint",
        sam,
        "--plugins",
        plugins,
        "--box",
        "40,30,120,90",
        "--point",
        "80,60",
        "--out",
        str(root / "overlay.png"),
        "--mask-out",
        str(root / "mask.png"),
    )
    assert r.returncode == 0, r.stderr
    assert "predicted IoU" in r.stdout
    assert Image.open(root / "overlay.png").size == (160, 120)
    mask = np.asarray(Image.open(root / "mask.png"))
    assert mask.shape == (120, 160) and set(np.unique(mask)) <= {0, 255}


@pytest.mark.parametrize(
    "case,expected",
    [
        ("missing_image", "does not exist"),
        ("corrupt_image", "is not a readable image"),
        ("box_outside", "lies outside the 160x120 (WxH) image"),
        ("point_outside", "lies outside the 160x120 (WxH) image"),
        ("plugins_as_checkpoint", "pass it as --plugins"),
        ("pth_as_checkpoint", "convert it"),
        ("bad_box_syntax", "--box must have 4 numbers"),
        ("no_prompt", "give a prompt"),
    ],
)
def test_predict_errors(files, case, expected):
    root, sam, plugins = files
    pth = root / "sam_vit_t.pth"
    pth.write_bytes(b"not used")
    image = str(root / "image.png")
    out = str(root / f"{case}.png")
    args = {
        "missing_image": [str(root / "nope.png"), "--checkpoint", sam, "--box", "1,1,5,5"],
        "corrupt_image": [str(root / "broken.jpg"), "--checkpoint", sam, "--box", "1,1,5,5"],
        "box_outside": [image, "--checkpoint", sam, "--box", "10,10,300,100"],
        "point_outside": [image, "--checkpoint", sam, "--point", "10,500"],
        "plugins_as_checkpoint": [image, "--checkpoint", plugins, "--box", "1,1,5,5"],
        "pth_as_checkpoint": [image, "--checkpoint", str(pth), "--box", "1,1,5,5"],
        "bad_box_syntax": [image, "--checkpoint", sam, "--box", "1,2,3"],
        "no_prompt": [image, "--checkpoint", sam],
    }[case]
    r = run(*args, "--out", out)
    assert r.returncode == 2
    assert expected in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
