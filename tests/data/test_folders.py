import numpy as np
import pytest
from PIL import Image

from stablesam_jax.data.folders import (
    DATASETS,
    HQ_EVAL,
    HQSEG44K_TRAIN,
    DataError,
    find_pairs,
    folder_pairs,
    load_pair,
)
from stablesam_jax.data.scenes import SceneDataset, largest_instance, write_scene_folder

# HQ-SAM's release layout, written out independently of the registry under test.
EXPECTED_DIRS = {
    "DIS5K-TR": ("DIS5K/DIS-TR/im", "DIS5K/DIS-TR/gt"),
    "DIS5K-VD": ("DIS5K/DIS-VD/im", "DIS5K/DIS-VD/gt"),
    "ThinObject5K-TR": (
        "thin_object_detection/ThinObject5K/images_train",
        "thin_object_detection/ThinObject5K/masks_train",
    ),
    "ThinObject5K-TE": (
        "thin_object_detection/ThinObject5K/images_test",
        "thin_object_detection/ThinObject5K/masks_test",
    ),
    "FSS": ("cascade_psp/fss_all", "cascade_psp/fss_all"),
    "DUTS-TR": ("cascade_psp/DUTS-TR", "cascade_psp/DUTS-TR"),
    "DUTS-TE": ("cascade_psp/DUTS-TE", "cascade_psp/DUTS-TE"),
    "ECSSD": ("cascade_psp/ecssd", "cascade_psp/ecssd"),
    "MSRA10K": ("cascade_psp/MSRA_10K", "cascade_psp/MSRA_10K"),
    "COIFT": ("thin_object_detection/COIFT/images", "thin_object_detection/COIFT/masks"),
    "HR-SOD": ("thin_object_detection/HRSOD/images", "thin_object_detection/HRSOD/masks_max255"),
}


def _save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_registry_and_groups():
    assert set(DATASETS) == set(EXPECTED_DIRS)
    assert HQSEG44K_TRAIN == (
        "DIS5K-TR",
        "ThinObject5K-TR",
        "FSS",
        "DUTS-TR",
        "DUTS-TE",
        "ECSSD",
        "MSRA10K",
    )
    assert HQ_EVAL == ("DIS5K-VD", "ThinObject5K-TE", "COIFT", "HR-SOD")


@pytest.mark.parametrize("name", sorted(EXPECTED_DIRS))
def test_every_layout_reads_back_what_was_written(tmp_path, name):
    write_scene_folder(tmp_path, name, num=3, seed=5, size=48)
    pairs = find_pairs(tmp_path, name)
    image_dir, mask_dir = EXPECTED_DIRS[name]
    assert len(pairs) == 3
    scenes = SceneDataset(3, seed=5, size=48)
    for index, (image_path, mask_path) in enumerate(pairs):
        assert image_path.parent == tmp_path / image_dir and image_path.suffix == ".jpg"
        assert mask_path.parent == tmp_path / mask_dir and mask_path.suffix == ".png"
        assert image_path.stem == mask_path.stem
        image, mask = load_pair(image_path, mask_path)
        assert image.dtype == np.uint8 and image.shape == (48, 48, 3)
        assert mask.dtype == bool
        # Masks are PNG, so the largest generated instance must come back bit-exact.
        np.testing.assert_array_equal(mask, largest_instance(scenes[index]["masks"]))
        # JPEG is lossy (and these textures are high-frequency), but colour averages survive.
        channel_means = image.reshape(-1, 3).mean(axis=0)
        expected_means = scenes[index]["image"].reshape(-1, 3).mean(axis=0)
        np.testing.assert_allclose(channel_means, expected_means, atol=2.0)


def test_mask_threshold_is_strictly_above_128(tmp_path):
    values = np.array([[0, 128, 129, 255]], dtype=np.uint8)
    _save(tmp_path / "a.png", np.zeros((1, 4, 3), np.uint8))
    _save(tmp_path / "m.png", values)
    _, mask = load_pair(tmp_path / "a.png", tmp_path / "m.png")
    np.testing.assert_array_equal(mask, [[False, False, True, True]])


def test_grayscale_and_rgba_images_become_rgb(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    _save(tmp_path / "gray.png", gray)
    rgba = np.zeros((3, 4, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 10
    _save(tmp_path / "rgba.png", rgba)
    _save(tmp_path / "mask.png", np.full((3, 4), 255, np.uint8))
    image, _ = load_pair(tmp_path / "gray.png", tmp_path / "mask.png")
    assert image.shape == (3, 4, 3)
    for channel in range(3):
        np.testing.assert_array_equal(image[..., channel], gray)
    image, _ = load_pair(tmp_path / "rgba.png", tmp_path / "mask.png")
    assert image.shape == (3, 4, 3) and (image[..., 0] == 200).all()


def test_rgb_mask_uses_first_channel(tmp_path):
    mask_rgb = np.zeros((2, 2, 3), np.uint8)
    mask_rgb[0, 0] = (255, 0, 0)
    mask_rgb[1, 1] = (0, 255, 255)
    _save(tmp_path / "i.png", np.zeros((2, 2, 3), np.uint8))
    _save(tmp_path / "m.png", mask_rgb)
    _, mask = load_pair(tmp_path / "i.png", tmp_path / "m.png")
    np.testing.assert_array_equal(mask, [[True, False], [False, False]])


def test_mismatched_mask_size_names_both_files(tmp_path):
    _save(tmp_path / "im" / "x.jpg", np.zeros((10, 12, 3), np.uint8))
    _save(tmp_path / "gt" / "x.png", np.zeros((10, 11), np.uint8))
    with pytest.raises(DataError) as error:
        load_pair(tmp_path / "im" / "x.jpg", tmp_path / "gt" / "x.png")
    message = str(error.value)
    assert str(tmp_path / "im" / "x.jpg") in message and str(tmp_path / "gt" / "x.png") in message
    assert "10x11" in message and "10x12" in message


def test_truncated_and_garbage_files_raise_data_error_naming_the_path(tmp_path):
    (image_path, mask_path), *_ = write_scene_folder(tmp_path, "DUTS-TE", num=1, size=64)
    data = image_path.read_bytes()
    image_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated") as error:
        load_pair(image_path, mask_path)
    assert str(image_path) in str(error.value)
    mask_path.write_bytes(b"definitely not a png")
    image_path.write_bytes(data)
    with pytest.raises(DataError) as error:
        load_pair(image_path, mask_path)
    assert str(mask_path) in str(error.value)


def test_unmatched_stems_are_listed(tmp_path):
    write_scene_folder(tmp_path, "DIS5K-VD", num=3, size=32)
    image_dir, mask_dir = (tmp_path / d for d in EXPECTED_DIRS["DIS5K-VD"])
    orphan_mask = sorted(mask_dir.iterdir())[0]
    orphan_mask.unlink()
    _save(mask_dir / "stray.png", np.zeros((32, 32), np.uint8))
    with pytest.raises(DataError) as error:
        find_pairs(tmp_path, "DIS5K-VD")
    message = str(error.value)
    assert orphan_mask.stem in message and "stray" in message
    assert "1 image(s)" in message and "1 mask(s)" in message
    with pytest.warns(UserWarning, match="stray"):
        pairs = folder_pairs(image_dir, mask_dir, allow_unmatched=True)
    assert len(pairs) == 2 and orphan_mask.stem not in {p[0].stem for p in pairs}


def test_missing_directory_is_named(tmp_path):
    with pytest.raises(DataError, match="DIS5K/DIS-TR/im"):
        find_pairs(tmp_path, "DIS5K-TR")
    (tmp_path / "a").mkdir()
    with pytest.raises(DataError, match=str(tmp_path / "missing_masks")):
        folder_pairs(tmp_path / "a", tmp_path / "missing_masks")


def test_empty_image_directory_is_an_error(tmp_path):
    (tmp_path / "im").mkdir()
    (tmp_path / "gt").mkdir()
    with pytest.raises(DataError, match="no images"):
        folder_pairs(tmp_path / "im", tmp_path / "gt")


def test_unknown_dataset_name():
    with pytest.raises(KeyError, match="DIS5K-TR"):
        find_pairs("/nonexistent", "DIS6K")
