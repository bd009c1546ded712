import pickle
import time

import numpy as np
import pytest
from scipy import ndimage

from stablesam_jax.data.scenes import (
    MIN_VISIBLE_FRACTION,
    SHAPE_KINDS,
    SceneDataset,
    generate_scene,
    largest_instance,
)

SEEDS = range(40)


@pytest.fixture(scope="module")
def scenes():
    generate_scene(0)  # warm caches before timing
    start = time.perf_counter()
    generated = [generate_scene(seed) for seed in SEEDS]
    elapsed_ms = (time.perf_counter() - start) / len(SEEDS) * 1e3
    print(f"\ngenerate_scene 256x256: {elapsed_ms:.2f} ms/scene")  # informative, not asserted
    return generated


def test_same_seed_same_scene_and_different_seeds_differ():
    first, again, other = generate_scene(7), generate_scene(7), generate_scene(8)
    np.testing.assert_array_equal(first["image"], again["image"])
    np.testing.assert_array_equal(first["masks"], again["masks"])
    assert first["shapes"] == again["shapes"]
    assert not np.array_equal(first["image"], other["image"])


def test_dtypes_shapes_and_object_count(scenes):
    for scene in scenes:
        image, masks = scene["image"], scene["masks"]
        assert image.dtype == np.uint8 and image.shape == (256, 256, 3)
        assert masks.dtype == bool and masks.ndim == 3 and masks.shape[1:] == (256, 256)
        assert 1 <= len(masks) <= 4
        assert len(scene["shapes"]) == len(masks)
    assert max(len(scene["masks"]) for scene in scenes) >= 3


def test_masks_are_large_enough_and_disjoint(scenes):
    min_pixels = MIN_VISIBLE_FRACTION * 256 * 256
    for scene in scenes:
        masks = scene["masks"]
        assert (masks.reshape(len(masks), -1).sum(axis=1) >= min_pixels).all()
        assert masks.sum(axis=0).max() <= 1  # each pixel belongs to at most one visible instance


def test_size_and_max_objects_are_respected():
    scene = generate_scene(3, size=96, max_objects=1)
    assert scene["image"].shape == (96, 96, 3)
    assert scene["masks"].shape == (1, 96, 96)


def test_scenes_are_varied(scenes):
    kinds = {kind for scene in scenes for kind in scene["shapes"]}
    assert kinds == set(SHAPE_KINDS)
    masks = [mask for scene in scenes for mask in scene["masks"]]
    # Holes: filling enclosed background changes the mask (rings, holed polygons, nested objects).
    assert any((ndimage.binary_fill_holes(mask) != mask).any() for mask in masks)
    # Thin parts: two 3x3 erosions remove most of a thin object's pixels.
    eroded_share = [ndimage.binary_erosion(m, iterations=2).sum() / m.sum() for m in masks]
    assert min(eroded_share) < 0.5
    # Look-alike neighbours and occlusion both leave instances touching one another.
    touching = 0
    for scene in scenes:
        grown = [ndimage.binary_dilation(mask) for mask in scene["masks"]]
        touching += sum(
            (grown[i] & scene["masks"][j]).any()
            for i in range(len(grown))
            for j in range(len(grown))
            if i != j
        )
    assert touching > 0


def test_objects_differ_from_their_surroundings(scenes):
    # Each instance's mean colour stands apart from the ring of pixels just outside it, otherwise
    # the masks could not be learned from the image.
    contrasts = []
    for scene in scenes:
        image = scene["image"].astype(np.float32)
        for mask in scene["masks"]:
            ring = ndimage.binary_dilation(mask, iterations=3) & ~mask
            contrasts.append(np.linalg.norm(image[mask].mean(0) - image[ring].mean(0)))
    assert np.median(contrasts) > 20


def test_scene_dataset_random_access_and_pickling():
    dataset = SceneDataset(5, seed=11, size=64)
    assert len(dataset) == 5
    record = dataset[2]
    expected = generate_scene((11, 2), 64)
    np.testing.assert_array_equal(record["image"], expected["image"])
    np.testing.assert_array_equal(record["masks"], expected["masks"])
    assert record["name"] == "scene_11_000002"
    assert not np.array_equal(dataset[3]["image"], record["image"])
    clone = pickle.loads(pickle.dumps(dataset))
    np.testing.assert_array_equal(clone[2]["image"], record["image"])
    with pytest.raises(IndexError):
        dataset[5]


def test_largest_instance_picks_most_pixels():
    masks = np.zeros((3, 4, 4), dtype=bool)
    masks[0, 0, :2] = True
    masks[1, 1:, :] = True
    masks[2, 0, 3] = True
    np.testing.assert_array_equal(largest_instance(masks), masks[1])
