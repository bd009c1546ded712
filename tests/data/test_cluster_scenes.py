"""The "clusters" scene family: its format, its determinism, and the two ambiguities it exists for
(touching look-alike neighbours, parts of another colour)."""

import pickle

import numpy as np
import pytest
from scipy import ndimage

from stablesam_jax.data.cluster_scenes import MIN_VISIBLE_FRACTION, generate_cluster_scene
from stablesam_jax.data.scenes import SCENE_FAMILIES, SceneDataset
from stablesam_jax.evaluation import DatasetSpec

SEEDS = range(30)


@pytest.fixture(scope="module")
def scenes():
    return [generate_cluster_scene((1, seed)) for seed in SEEDS]


def test_same_seed_same_scene_and_different_seeds_differ():
    first, again, other = (generate_cluster_scene(s) for s in (7, 7, 8))
    np.testing.assert_array_equal(first["image"], again["image"])
    np.testing.assert_array_equal(first["masks"], again["masks"])
    assert first["shapes"] == again["shapes"]
    assert not np.array_equal(first["image"], other["image"])


def test_format_sizes_and_disjoint_masks(scenes):
    min_pixels = MIN_VISIBLE_FRACTION * 256 * 256
    for scene in scenes:
        image, masks = scene["image"], scene["masks"]
        assert image.dtype == np.uint8 and image.shape == (256, 256, 3)
        assert masks.dtype == bool and masks.shape[1:] == (256, 256)
        assert 1 <= len(masks) <= 8 and len(scene["shapes"]) == len(masks)
        assert (masks.reshape(len(masks), -1).sum(axis=1) >= min_pixels).all()
        assert masks.sum(axis=0).max() <= 1


def _touches_another(masks: np.ndarray, index: int) -> bool:
    grown = ndimage.binary_dilation(masks[index], iterations=2)
    others = np.delete(masks, index, axis=0).any(axis=0)
    return bool((grown & others).any())


def test_most_objects_touch_a_neighbour_of_the_same_kind(scenes):
    touching = [
        _touches_another(scene["masks"], i) for scene in scenes for i in range(len(scene["masks"]))
    ]
    assert np.mean(touching) > 0.7


def test_parts_have_another_colour_than_their_body(scenes):
    shows_part = []  # per "+part" instance: a visible share of it far from its median colour
    for scene in scenes:
        pixels = scene["image"].astype(np.float64)
        for mask, kind in zip(scene["masks"], scene["shapes"]):
            if kind.endswith("+part"):
                colours = pixels[mask]
                far = np.linalg.norm(colours - np.median(colours, axis=0), axis=-1) > 60
                shows_part.append(far.mean() > 0.03)
    # A part can be hidden behind a later neighbour; most are not.
    assert len(shows_part) >= 10 and np.mean(shows_part) > 0.7


def test_scene_dataset_family_and_eval_spec():
    dataset = SceneDataset(3, seed=4, family="clusters")
    scene = dataset[1]
    assert scene["name"] == "clusters_4_000001"
    np.testing.assert_array_equal(scene["image"], generate_cluster_scene((4, 1), 256, 4)["image"])
    again = pickle.loads(pickle.dumps(dataset))[1]
    np.testing.assert_array_equal(again["masks"], scene["masks"])
    source = DatasetSpec(name="c", kind="scenes", num=2, seed=4, family="clusters").open()
    assert len(source) == 2 and source[1][2] == "clusters_4_000001"
    assert "shapes" in SCENE_FAMILIES and "clusters" in SCENE_FAMILIES


def test_bad_family_or_object_count_is_refused():
    with pytest.raises(ValueError, match="scene family must be one of .*'dots'"):
        SceneDataset(2, family="dots")
    with pytest.raises(ValueError, match="max_objects >= 2, got 1"):
        generate_cluster_scene(0, max_objects=1)
