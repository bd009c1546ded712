import numpy as np
import pytest
from scipy import ndimage

from stablesam_jax.data.folders import DataError
from stablesam_jax.data.pipeline import (
    OCCLUSION_NONE,
    PairSource,
    augment,
    make_eval_source,
    make_train_dataset,
    pair_source,
)
from stablesam_jax.data.scenes import SceneDataset, largest_instance, write_scene_folder

SIZE = 64
RED, GREEN, BLUE = (230, 20, 20), (20, 200, 20), (30, 40, 200)


class ColouredObjectSource:
    """Ellipses of one known colour per record on a noisy blue background.

    Record i's object is RED for even i and GREEN for odd i, so after any augmentation (and
    occlusion by another record's object) the target mask must cover exactly its own colour.
    """

    def __init__(self, num=8, height=80, width=120):
        self.num, self.height, self.width = num, height, width

    def __len__(self):
        return self.num

    def __getitem__(self, index):
        rng = np.random.default_rng(index)
        yy, xx = np.mgrid[0 : self.height, 0 : self.width]
        cy, cx = rng.uniform(0.3, 0.7) * self.height, rng.uniform(0.3, 0.7) * self.width
        mask = ((yy - cy) / (self.height * 0.25)) ** 2 + ((xx - cx) / (self.width * 0.2)) ** 2 <= 1
        image = np.empty((self.height, self.width, 3), np.uint8)
        image[:] = BLUE
        image += rng.integers(0, 20, size=image.shape, dtype=np.uint8)
        image[mask] = RED if index % 2 == 0 else GREEN
        return {"image": image, "masks": mask[None], "name": f"object{index}"}


class IdentitySource:
    """Record i is a constant image of a value identifying i, with a full mask."""

    VALUES = [10, 30, 50, 70, 90, 110, 150, 170, 190, 210, 230, 250]  # 128 is the padding value

    def __len__(self):
        return len(self.VALUES)

    def __getitem__(self, index):
        image = np.full((40, 30, 3), self.VALUES[index], np.uint8)
        return {"image": image, "masks": np.ones((1, 40, 30), bool), "name": str(index)}


def _record_ids(batch):
    return [IdentitySource.VALUES.index(int(image[0, 0, 0])) for image in batch["image"]]


def _take(dataset, count):
    iterator = iter(dataset)
    batches = [next(iterator) for _ in range(count)]
    iterator.close()
    return batches


def _assert_batches_equal(first, second):
    assert len(first) == len(second)
    for a, b in zip(first, second):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _scene_dataset(**overrides):
    kwargs = dict(
        image_size=SIZE, batch_size=3, seed=7, mixture=None, occlusion_prob=0.5, read_threads=1
    )
    kwargs.update(overrides)
    return make_train_dataset(SceneDataset(12, seed=1, size=96), **kwargs)


# --------------------------------------------------------------------------------------------------
# augment()


def _left_object(height=60, width=100):
    image = np.zeros((height, width, 3), np.uint8)
    mask = np.zeros((height, width), bool)
    mask[20:40, 5:25] = True
    image[mask] = RED
    return image, mask


def test_flip_without_jitter_mirrors_image_and_mask():
    image, mask = _left_object()
    out_image, out_mask, input_hw = augment(
        image, mask, np.random.default_rng(0), image_size=100, lsj_range=None, flip_prob=1.0
    )
    # Long side 100 already: no resize, so the flip is exact: columns 5..24 -> 75..94.
    assert input_hw.tolist() == [60, 100]
    expected = np.zeros((100, 100), bool)
    expected[20:40, 75:95] = True
    np.testing.assert_array_equal(out_mask, expected)
    assert (out_image[20:40, 75:95] == RED).all()
    assert (out_image[60:] == 128).all()


def test_fixed_scale_jitter_resizes_and_pads():
    image, mask = _left_object(height=200, width=100)
    out_image, out_mask, input_hw = augment(
        image, mask, np.random.default_rng(0), image_size=64, lsj_range=(0.5, 0.5), flip_prob=0.0
    )
    # Long side 200 -> 0.5 * 64 = 32: scale 0.16, so 200x100 -> 32x16 and the object
    # rows 20..39, cols 5..24 land at rows 3.2..6.4, cols 0.8..4.
    assert input_hw.tolist() == [32, 16]
    assert (out_image[32:] == 128).all() and (out_image[:, 16:] == 128).all()
    assert not out_mask[32:].any() and not out_mask[:, 16:].any()
    rows, cols = np.nonzero(out_mask)
    assert 3 <= rows.min() and rows.max() <= 6 and 0 <= cols.min() and cols.max() <= 4


def test_jittered_mask_covers_exactly_the_object_colour():
    source = ColouredObjectSource()
    for seed in range(30):
        record = source[seed % 2]
        image, mask, input_hw = augment(
            record["image"], record["masks"][0], np.random.default_rng(seed), image_size=SIZE
        )
        height, width = input_hw
        red = (image[..., 0] > 200) & (image[..., 1] < 60)
        assert mask.any()
        # Interpolation blends one pixel of boundary; away from it mask and colour agree exactly.
        interior = ndimage.binary_erosion(mask, iterations=2)
        outside = ~ndimage.binary_dilation(mask, iterations=2)
        if seed % 2 == 0:
            assert red[interior].all()
        assert not red[outside].any()
        assert (image[height:] == 128).all() and (image[:, width:] == 128).all()


def test_tiny_target_is_never_lost():
    image = np.full((300, 300, 3), 60, np.uint8)
    mask = np.zeros((300, 300), bool)
    mask[2:5, 290:293] = True  # 3x3 pixels in a corner: most 2x-zoom crops miss it
    for seed in range(20):
        _, out_mask, _ = augment(
            image, mask, np.random.default_rng(seed), image_size=SIZE, lsj_range=(2.0, 2.0)
        )
        assert out_mask.any()
    # With no crop tries at all the fallback (no jitter) still keeps a sub-pixel target.
    _, out_mask, input_hw = augment(
        image, mask, np.random.default_rng(0), image_size=SIZE, max_crop_tries=0
    )
    assert out_mask.any() and input_hw.tolist() == [SIZE, SIZE]


# --------------------------------------------------------------------------------------------------
# make_train_dataset()


def test_batches_have_fixed_shapes_and_valid_masks():
    batches = _take(_scene_dataset(), 3)
    expected = {
        "image": (np.uint8, (3, SIZE, SIZE, 3)),
        "mask": (np.bool_, (3, SIZE, SIZE)),
        "input_hw": (np.int32, (3, 2)),
        "box": (np.float32, (3, 4)),
        "box_valid": (np.bool_, (3,)),
        "point_coords": (np.float32, (3, 10, 2)),
        "point_labels": (np.int32, (3, 10)),
        "mask_input": (np.float32, (3, SIZE // 4, SIZE // 4)),
        "mask_valid": (np.bool_, (3,)),
        "kind": (np.int32, (3,)),
        "occlusion": (np.int32, (3,)),
        "num_corrupt_skipped": (np.int32, (3,)),
    }
    for batch in batches:
        assert {key: (value.dtype.type, value.shape) for key, value in batch.items()} == expected
        for mask, (height, width), image in zip(batch["mask"], batch["input_hw"], batch["image"]):
            assert mask.any()
            assert not mask[height:].any() and not mask[:, width:].any()
            assert (image[height:] == 128).all() and (image[:, width:] == 128).all()
        assert (batch["num_corrupt_skipped"] == 0).all()


def test_occluded_masks_still_cover_only_their_own_colour():
    dataset = make_train_dataset(
        ColouredObjectSource(),
        image_size=SIZE,
        batch_size=8,
        seed=3,
        mixture={"gt_box": 1.0},
        occlusion_prob=1.0,
        read_threads=1,
    )
    occluded = 0
    for batch in _take(dataset, 3):
        occluded += int((batch["occlusion"] != OCCLUSION_NONE).sum())
        for image, mask in zip(batch["image"], batch["mask"]):
            interior = ndimage.binary_erosion(mask, iterations=2)
            red = (image[..., 0] > 200) & (image[..., 1] < 60)
            green = (image[..., 1] > 180) & (image[..., 0] < 60)
            # The target is one colour; a pasted object of the other colour is never inside it.
            assert red[interior].all() or green[interior].all()
    assert occluded > 0


def test_same_seed_same_batches_other_seed_differs():
    first = _take(_scene_dataset(), 2)
    _assert_batches_equal(first, _take(_scene_dataset(), 2))
    other = _take(_scene_dataset(seed=8), 2)
    assert not np.array_equal(first[0]["image"], other[0]["image"])


def test_checkpointed_iterator_resumes_exactly():
    dataset = _scene_dataset()
    uninterrupted = _take(dataset, 5)
    iterator = iter(dataset)
    for _ in range(3):
        next(iterator)
    state = iterator.get_state()
    iterator.close()
    resumed = iter(_scene_dataset())
    resumed.set_state(state)
    _assert_batches_equal(uninterrupted[3:], [next(resumed), next(resumed)])
    resumed.close()


def test_every_record_once_per_epoch_and_reshuffled():
    dataset = make_train_dataset(
        IdentitySource(),
        image_size=32,
        batch_size=4,
        seed=0,
        mixture=None,
        occlusion_prob=0.0,
        read_threads=1,
    )
    batches = _take(dataset, 6)
    ids = [i for batch in batches for i in _record_ids(batch)]
    sizes = [tuple(hw) for batch in batches for hw in batch["input_hw"].tolist()]
    first_epoch, second_epoch = ids[:12], ids[12:]
    assert sorted(first_epoch) == sorted(second_epoch) == list(range(12))
    assert first_epoch != second_epoch
    # Each epoch draws fresh augmentation for the same record (here: the jitter scale).
    first_sizes = dict(zip(first_epoch, sizes[:12]))
    second_sizes = dict(zip(second_epoch, sizes[12:]))
    assert sum(first_sizes[i] != second_sizes[i] for i in range(12)) >= 6


def test_shards_are_disjoint_and_cover_the_data():
    seen = []
    for shard in range(3):
        dataset = make_train_dataset(
            IdentitySource(),
            image_size=32,
            batch_size=2,
            seed=0,
            mixture=None,
            occlusion_prob=0.0,
            shard_index=shard,
            shard_count=3,
            read_threads=1,
        )
        seen.append({i for batch in _take(dataset, 2) for i in _record_ids(batch)})
    assert seen == [{0, 3, 6, 9}, {1, 4, 7, 10}, {2, 5, 8, 11}]


def _folder_with_one_truncated_image(tmp_path):
    pairs = write_scene_folder(tmp_path, "ECSSD", num=6, seed=2, size=48)
    broken = pairs[3][0]
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) // 3])
    return broken


def test_corrupt_file_stops_training_with_its_path(tmp_path):
    broken = _folder_with_one_truncated_image(tmp_path)
    dataset = make_train_dataset(
        pair_source(tmp_path, ["ECSSD"]),
        image_size=SIZE,
        batch_size=2,
        seed=0,
        mixture=None,
        occlusion_prob=0.0,
        read_threads=1,
    )
    iterator = iter(dataset)
    with pytest.raises(DataError, match=str(broken)):
        for _ in range(3):  # one epoch visits every record
            next(iterator)


def test_skip_corrupt_replaces_and_counts(tmp_path):
    _folder_with_one_truncated_image(tmp_path)
    dataset = make_train_dataset(
        pair_source(tmp_path, ["ECSSD"]),
        image_size=SIZE,
        batch_size=2,
        seed=0,
        mixture=None,
        occlusion_prob=0.0,
        skip_corrupt=True,
        read_threads=1,
    )
    batches = _take(dataset, 3)  # exactly one epoch: the broken record is met once
    assert sum(int(batch["num_corrupt_skipped"].sum()) for batch in batches) == 1
    assert all(batch["mask"].reshape(2, -1).any(axis=1).all() for batch in batches)


def test_worker_processes_give_the_in_process_batches():
    in_process = _take(_scene_dataset(), 3)
    with_workers = _take(_scene_dataset(num_workers=2), 3)
    _assert_batches_equal(in_process, with_workers)


# --------------------------------------------------------------------------------------------------
# Sources


def test_pair_source_names_and_eval_source(tmp_path):
    written = write_scene_folder(tmp_path, "COIFT", num=2, seed=4, size=40)
    source = pair_source(tmp_path, ["COIFT"])
    assert len(source) == 2 and source[1]["name"] == f"COIFT/{written[1][0].stem}"
    evaluation = make_eval_source(tmp_path, "COIFT")
    image, mask, name = evaluation[0]
    assert image.shape == (40, 40, 3) and mask.shape == (40, 40)
    np.testing.assert_array_equal(mask, largest_instance(SceneDataset(2, 4, 40)[0]["masks"]))
    assert name == f"COIFT/{written[0][0].stem}"
    assert len(list(evaluation)) == 2


def test_eval_source_over_scenes_uses_the_largest_instance():
    scenes = SceneDataset(3, seed=9, size=48)
    evaluation = make_eval_source(scenes)
    for index, (image, mask, name) in enumerate(evaluation):
        np.testing.assert_array_equal(image, scenes[index]["image"])
        np.testing.assert_array_equal(mask, largest_instance(scenes[index]["masks"]))
        assert name == scenes[index]["name"]
    with pytest.raises(ValueError, match="name the dataset"):
        make_eval_source("/some/root")


def test_pair_source_pickles_paths_only(tmp_path):
    import pickle

    written = write_scene_folder(tmp_path, "FSS", num=1, size=32)
    source = PairSource(written)
    clone = pickle.loads(pickle.dumps(source))
    np.testing.assert_array_equal(clone[0]["masks"], source[0]["masks"])


def test_tfds_array_record_round_trip_without_tensorflow(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    import pickle
    import sys

    from stablesam_jax.data.tfds_builder import TfdsRecordSource, build_tfds

    write_scene_folder(tmp_path / "data", "DIS5K-VD", num=3, seed=1, size=40)
    write_scene_folder(tmp_path / "data", "COIFT", num=2, seed=2, size=40)
    builder = build_tfds(tmp_path / "data", tmp_path / "tfds", ["DIS5K-VD", "COIFT"])
    build_tfds(tmp_path / "data", tmp_path / "tfds", ["DIS5K-VD", "COIFT"])  # second call: no-op
    assert "tensorflow" not in sys.modules
    source = TfdsRecordSource(builder.data_dir, ["DIS5K-VD", "COIFT"])
    expected = pair_source(tmp_path / "data", ["DIS5K-VD", "COIFT"])
    assert len(source) == len(expected) == 5
    by_name = {expected[i]["name"]: expected[i] for i in range(len(expected))}
    for index in range(len(source)):
        record = source[index]
        reference = by_name[record["name"]]
        np.testing.assert_array_equal(record["image"], reference["image"])  # JPEG bytes kept
        np.testing.assert_array_equal(record["masks"], reference["masks"])
    clone = pickle.loads(pickle.dumps(source))
    np.testing.assert_array_equal(clone[4]["masks"], source[4]["masks"])
    batches = _take(
        make_train_dataset(
            source, image_size=32, batch_size=2, seed=0, mixture=None, occlusion_prob=0.5
        ),
        2,
    )
    assert batches[1]["mask"].shape == (2, 32, 32)


def _one_scene_batches(target_instance, batches=2):
    """Batches of one generated scene, no augmentation: each mask is an instance as stored."""
    source = SceneDataset(1, seed=1, size=SIZE)
    dataset = make_train_dataset(
        source,
        image_size=SIZE,
        batch_size=4,
        seed=0,
        mixture={"gt_box": 1.0},
        occlusion_prob=0.0,
        lsj_range=None,
        flip_prob=0.0,
        read_threads=1,
        target_instance=target_instance,
    )
    return np.asarray(source[0]["masks"], bool), _take(dataset, batches)


def test_largest_target_is_the_instance_with_the_most_pixels():
    instances, batches = _one_scene_batches("largest")
    sizes = instances.reshape(len(instances), -1).sum(axis=1)
    assert (sizes > 0).sum() >= 2 and len(set(sizes.tolist())) == len(sizes)
    biggest = instances[int(np.argmax(sizes))]
    for batch in batches:
        for mask in batch["mask"]:
            np.testing.assert_array_equal(mask, biggest)


def test_random_target_draws_other_instances_too():
    instances, batches = _one_scene_batches("random", batches=4)
    masks = np.concatenate([batch["mask"] for batch in batches])
    drawn = {int(np.flatnonzero([np.array_equal(m, inst) for inst in instances])[0]) for m in masks}
    assert len(drawn) >= 2


def test_unknown_target_instance_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="target_instance must be one of .*'largest'.*'biggest'"):
        _scene_dataset(target_instance="biggest")
