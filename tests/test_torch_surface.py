"""Loading official .pth files (conversion cache, messages) and the torch-shaped surface:
`Sam.to` / `.device` / `.eval`, `Sam.__call__` records, `predict_torch`, the `*_torch`
transforms, and torch staying unimported by code that never touches it."""

import pytest

pytest.importorskip("torch")  # without torch (CI's Python 3.12 lane): skipped, not an error

import os
import subprocess
import sys
import textwrap
import warnings

import jax
import numpy as np
import torch
import torchvision_stub  # noqa: F401 - the official package imports torchvision
from segment_anything.utils.transforms import ResizeLongestSide as OfficialResize

from stablesam_jax import SamPredictor, build_sam
from stablesam_jax.checkpoint import CheckpointError
from stablesam_jax.convert import ConversionError, to_torch_state_dict
from stablesam_jax.data.scenes import generate_scene
from stablesam_jax.modeling import SAM_VARIANTS
from stablesam_jax.tools.official import build_official_sam, randomize_
from stablesam_jax.utils.transforms import ResizeLongestSide

pytestmark = pytest.mark.torch_reference


def save_pth(path, seed: int) -> dict:
    torch_sam = build_official_sam(SAM_VARIANTS["vit_t"])
    randomize_(torch_sam, seed)
    state = {k: v for k, v in torch_sam.state_dict().items() if "pixel_" not in k}
    torch.save(state, path)
    return {k: v.numpy() for k, v in state.items()}


def same_weights(model, state) -> bool:
    ours = to_torch_state_dict(model)
    return set(ours) == set(state) and all(np.array_equal(ours[k], state[k]) for k in state)


@pytest.fixture(scope="module")
def vit_t(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("pth") / "sam_vit_t.pth")
    state = save_pth(path, seed=0)
    return path, state, build_sam("vit_t", checkpoint=path)


def test_pth_is_converted_once_then_read_from_the_cache_without_torch(tmp_path, monkeypatch):
    path = str(tmp_path / "sam_vit_t.pth")
    state = save_pth(path, seed=1)
    assert same_weights(build_sam("vit_t", checkpoint=path), state)
    assert len(os.listdir(path + ".stablesam_jax")) == 1  # the cache entry, beside the file
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails
    assert same_weights(build_sam("vit_t", checkpoint=path), state)
    os.rename(path + ".stablesam_jax", str(tmp_path / "moved"))
    with pytest.raises(ConversionError, match=r"pip install 'stablesam-jax\[convert\]'"):
        build_sam("vit_t", checkpoint=path)


def test_a_changed_file_is_converted_again(tmp_path):
    path = str(tmp_path / "sam_vit_t.pth")
    save_pth(path, seed=1)
    build_sam("vit_t", checkpoint=path)
    state = save_pth(path, seed=2)  # same size, new contents
    os.utime(path, ns=(1, 1))  # an older mtime: the key still changes (it hashes contents too)
    assert same_weights(build_sam("vit_t", checkpoint=path), state)
    assert len(os.listdir(path + ".stablesam_jax")) == 1  # the stale entry is gone


def test_unwritable_location_falls_back_to_the_user_cache(tmp_path, monkeypatch):
    path = str(tmp_path / "sam_vit_t.pth")
    state = save_pth(path, seed=1)
    with open(path + ".stablesam_jax", "w") as f:  # a file where the cache folder would go
        f.write("not ours")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert same_weights(build_sam("vit_t", checkpoint=path), state)
    (folder,) = os.listdir(tmp_path / "cache" / "stablesam_jax")
    assert len(os.listdir(tmp_path / "cache" / "stablesam_jax" / folder)) == 1
    with open(path + ".stablesam_jax") as f:
        assert f.read() == "not ours"  # nothing overwritten


def test_wrong_model_type_names_the_type_of_the_file(tmp_path):
    path = str(tmp_path / "sam_vit_t.pth")
    save_pth(path, seed=1)
    with pytest.raises(ConversionError) as e:  # first load: from the shapes
        build_sam("vit_b", checkpoint=path)
    assert 'holds vit_t weights (from its shapes), not vit_b: use sam_model_registry["vit_t"]' in (
        str(e.value)
    )
    build_sam("vit_t", checkpoint=path)
    with pytest.raises(CheckpointError, match="use model_type='vit_t'"):  # cached load
        build_sam("vit_b", checkpoint=path)
    with pytest.raises(ValueError, match="The first argument is the model type"):
        build_sam(path)


@pytest.mark.skipif(bool(jax.devices()[0].platform == "gpu"), reason="tests the no-GPU fallback")
def test_to_cuda_without_a_gpu_warns_once_and_keeps_the_cpu(vit_t):
    _, _, sam = vit_t
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert sam.to(device="cuda") is sam
    assert [str(w.message) for w in caught if w.category is RuntimeWarning] == [
        "device 'cuda' was asked for, but JAX has no GPU here; using cpu:0 instead (install JAX "
        "with GPU support to use a GPU)"
    ]
    assert sam.device == torch.device("cpu") and SamPredictor(sam).device == torch.device("cpu")


def test_to_and_eval_take_torch_style_arguments(vit_t):
    _, _, sam = vit_t
    assert sam.to(torch.device("cpu")) is sam and sam.eval() is sam and sam.cpu() is sam
    assert sam.to(torch.float32) is sam
    with pytest.raises(ValueError, match="unknown device 'mps'"):
        sam.to("mps")
    with pytest.raises(TypeError, match="build the model with build_sam"):
        sam.to(dtype=torch.float16)


def test_call_takes_chw_torch_and_hwc_numpy_records(vit_t):
    _, _, sam = vit_t
    image = generate_scene(1, size=256)["image"][:170]  # already resized: long side 256
    boxes = np.array([[10, 20, 120, 150], [30, 30, 60, 90]], np.float32)
    chw = {"image": torch.as_tensor(image).permute(2, 0, 1), "boxes": torch.as_tensor(boxes)}
    hwc = {"image": image, "boxes": boxes}
    points = {"image": image, "point_coords": boxes[:, None, :2], "point_labels": np.ones((2, 1))}
    records = [{**r, "original_size": (340, 512)} for r in (chw, hwc, points, {"image": image})]
    out = sam(records, multimask_output=False)
    assert isinstance(out[0]["masks"], torch.Tensor) and isinstance(out[1]["masks"], jax.Array)
    for key in ("masks", "iou_predictions", "low_res_logits"):
        np.testing.assert_array_equal(out[0][key].numpy(), np.asarray(out[1][key]))
    assert out[0]["masks"].shape == (2, 1, 340, 512) and out[3]["masks"].shape == (1, 1, 340, 512)
    assert not np.array_equal(np.asarray(out[2]["low_res_logits"]), out[0]["low_res_logits"])
    with pytest.raises(ValueError, match="larger than the model's 256x256 input"):
        sam([{"image": np.zeros((300, 200, 3), np.uint8), "original_size": (300, 200)}], False)


def test_predict_torch_equals_predict_batch(vit_t):
    _, _, sam = vit_t
    predictor = SamPredictor(sam)
    image = generate_scene(2, size=180)["image"][:120]
    predictor.set_image(image)
    boxes = np.array([[0, 0, 180, 120], [20, 10, 90, 100]], np.float32)  # one on the border
    want = predictor.predict_batch(boxes=boxes, multimask_output=True)
    transformed = predictor.transform.apply_boxes_torch(torch.as_tensor(boxes), image.shape[:2])
    got = predictor.predict_torch(None, None, boxes=transformed, multimask_output=True)
    for w, g in zip(want, got):
        assert isinstance(g, torch.Tensor)
        np.testing.assert_array_equal(w, g.numpy())


def test_torch_transforms_equal_the_official_ones():
    ours, official = ResizeLongestSide(256), OfficialResize(256)
    coords = torch.rand(3, 5, 2) * 500
    torch.testing.assert_close(
        ours.apply_coords_torch(coords, (400, 500)),
        official.apply_coords_torch(coords, (400, 500)),
        rtol=0,
        atol=0,
    )
    boxes = torch.tensor([[75, 275, 1725, 850], [425, 600, 700, 875]])
    torch.testing.assert_close(
        ours.apply_boxes_torch(boxes, (1200, 1800)),
        official.apply_boxes_torch(boxes, (1200, 1800)),
        rtol=0,
        atol=0,
    )
    # The official sizes from image.shape[0:2] (B, C); with B = H and C = W both agree.
    images = torch.rand(16, 24, 16, 24)
    torch.testing.assert_close(
        ours.apply_image_torch(images), official.apply_image_torch(images), rtol=0, atol=0
    )


def test_code_without_torch_objects_never_imports_torch(vit_t, repo_root):
    path, _, _ = vit_t  # converted and cached by the fixture
    script = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        import stablesam_jax.utils.amg, stablesam_jax.utils.transforms
        from stablesam_jax import SamAutomaticMaskGenerator, SamPredictor, build_sam
        sam = build_sam("vit_t", checkpoint={path!r}).to("cpu").eval()
        image = np.zeros((60, 80, 3), np.uint8)
        predictor = SamPredictor(sam)
        predictor.set_image(image)
        predictor.predict(box=np.array([5, 5, 40, 40]))
        predictor.predict_batch(boxes=np.array([[5, 5, 40, 40]]))
        sam([{{"image": predictor.transform.apply_image(image), "original_size": (60, 80)}}], True)
        SamAutomaticMaskGenerator(sam, points_per_side=2).generate(image)
        print(sam.device, predictor.device)
        assert "torch" not in sys.modules, "torch was imported"
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600, cwd=repo_root
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "cpu:0 cpu:0" in run.stdout
