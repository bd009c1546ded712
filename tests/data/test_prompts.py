import numpy as np
import pytest
from scipy import ndimage

from stablesam_jax.constants import PAD_LABEL, POSITIVE_LABEL
from stablesam_jax.data.prompts import (
    COARSE_MASK_LOGIT,
    PROMPT_TYPES,
    RTS_KINDS,
    box_iou,
    coarse_mask,
    eval_prompts,
    mask_to_box,
    noisy_box,
    occlude,
    paste_object,
    random_points,
    sample_rts_prompt,
)


def reference_iou(a, b):
    """Continuous-area box IoU written out independently of the module."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def disc(size, center, radius):
    rows, cols = np.mgrid[:size, :size]
    return (rows - center[0]) ** 2 + (cols - center[1]) ** 2 <= radius**2


def test_mask_to_box_inclusive_max_index():
    mask = np.zeros((10, 12), bool)
    mask[2:5, 3:9] = True  # rows 2-4, cols 3-8
    mask[7, 1] = True
    np.testing.assert_array_equal(mask_to_box(mask), [1, 2, 8, 7])
    assert mask_to_box(mask).dtype == np.float32
    one = np.zeros((4, 4), bool)
    one[3, 2] = True
    np.testing.assert_array_equal(mask_to_box(one), [2, 3, 2, 3])


def test_empty_mask_error_message():
    with pytest.raises(ValueError, match="empty mask: cannot derive a box prompt"):
        mask_to_box(np.zeros((5, 5), bool))
    with pytest.raises(ValueError, match="empty mask"):
        eval_prompts(np.zeros((5, 5), bool), "noisy_box")
    with pytest.raises(ValueError, match="empty mask"):
        sample_rts_prompt(np.zeros((64, 64), bool), np.random.default_rng(0), {"one_point": 1})


def test_box_iou_by_hand():
    assert box_iou([0, 0, 2, 2], [1, 1, 3, 3]) == pytest.approx(1 / 7)
    assert box_iou([0, 0, 4, 2], [0, 0, 4, 2]) == 1.0
    assert box_iou([0, 0, 1, 1], [2, 2, 3, 3]) == 0.0
    assert box_iou([0, 0, 4, 4], [1, 1, 3, 3]) == pytest.approx(4 / 16)


def test_noisy_box_distribution():
    rng = np.random.default_rng(0)
    gt = np.array([20, 30, 120, 90], np.float32)  # 100 x 60
    boxes = np.stack([noisy_box(gt, rng, (200, 200)) for _ in range(500)])
    ious = np.array([reference_iou(b, gt) for b in boxes])
    assert boxes.dtype == np.float32
    assert np.all(ious >= 0.5)
    assert 0.6 < ious.mean() < 0.8  # genuinely noisy, not near-GT boxes
    assert np.mean(ious < 0.7) > 0.3
    assert np.all(boxes[:, 0] < boxes[:, 2]) and np.all(boxes[:, 1] < boxes[:, 3])
    # Each edge moves at most 0.4 * half the side: 20 px horizontally, 12 px vertically.
    bound = np.array([20, 12, 20, 12]) + 1e-3
    assert np.all(np.abs(boxes - gt) <= bound)
    assert np.all(np.abs(boxes - gt).max(axis=0) > 0.9 * bound)  # and they use that range


def test_noisy_box_stays_in_image():
    rng = np.random.default_rng(1)
    gt = np.array([0, 0, 30, 20], np.float32)  # touches the top-left corner of a 40x50 image
    for _ in range(100):
        box = noisy_box(gt, rng, (40, 50))
        assert box.min() >= 0 and box[2] <= 49 and box[3] <= 39
        assert reference_iou(box, gt) >= 0.5


@pytest.mark.parametrize("iou_range", [(0.5, 0.6), (0.6, 0.7)])
@pytest.mark.parametrize(
    "gt,image_hw",
    [
        ([20, 30, 120, 90], (200, 200)),
        ([0, 0, 255, 255], (256, 256)),  # fills the image: can only shrink
        ([10, 10, 12, 11], (64, 64)),  # tiny
    ],
)
def test_noisy_box_iou_bins(iou_range, gt, image_hw):
    rng = np.random.default_rng(2)
    gt = np.array(gt, np.float32)
    for _ in range(100):
        box = noisy_box(gt, rng, image_hw, iou_range=iou_range)
        assert iou_range[0] <= reference_iou(box, gt) < iou_range[1]


def test_noisy_box_reports_impossible_requests():
    gt = np.array([10, 10, 50, 50], np.float32)
    with pytest.raises(RuntimeError, match="could not draw a noisy box"):
        noisy_box(gt, np.random.default_rng(0), (64, 64), iou_range=(0.9999, 1.0), max_tries=64)
    with pytest.raises(ValueError, match="too small"):
        # A one-pixel-wide image admits no box with x0 < x1.
        noisy_box(np.array([0, 0, 0, 5], np.float32), np.random.default_rng(0), (8, 1))


def test_random_points_inside_mask_and_distinct():
    mask = disc(64, (30, 20), 9)
    coords, labels = random_points(mask, 10, np.random.default_rng(0))
    assert coords.shape == (10, 2) and coords.dtype == np.float32
    assert labels.dtype == np.int32 and np.all(labels == POSITIVE_LABEL)
    xs, ys = coords[:, 0].astype(int), coords[:, 1].astype(int)
    assert np.all(mask[ys, xs])  # x is the column, y the row
    assert len({(x, y) for x, y in zip(xs, ys)}) == 10
    tiny = np.zeros((8, 8), bool)
    tiny[2, 5] = tiny[6, 1] = True
    coords, _ = random_points(tiny, 5, np.random.default_rng(0))  # more points than pixels
    assert np.all(tiny[coords[:, 1].astype(int), coords[:, 0].astype(int)])


def test_random_points_are_uniform_over_the_mask():
    mask = np.zeros((40, 40), bool)
    mask[:10, :10] = True  # 100 px
    mask[30:, 20:30] = True  # 100 px
    rng = np.random.default_rng(3)
    top = sum(random_points(mask, 1, rng)[0][0, 1] < 20 for _ in range(1000))
    assert 430 < top < 570


@pytest.mark.parametrize("prompt_type", PROMPT_TYPES)
def test_eval_prompts_shapes_and_reproducibility(prompt_type):
    mask = disc(128, (60, 70), 25)
    prompts = eval_prompts(mask, prompt_type, num=20, seed=7)
    again = eval_prompts(mask, prompt_type, num=20, seed=7)
    other = eval_prompts(mask, prompt_type, num=20, seed=8)
    assert len(prompts) == 20
    gt_box = np.array([45, 35, 95, 85], np.float32)  # disc centre (row 60, col 70), radius 25
    for p, q in zip(prompts, again):
        assert set(p) == {"box", "point_coords", "point_labels"}
        for key in p:
            if p[key] is None:
                assert q[key] is None
            else:
                np.testing.assert_array_equal(p[key], q[key])
    if "box" in prompt_type:
        assert all(p["point_coords"] is None and p["box"].dtype == np.float32 for p in prompts)
        ious = [reference_iou(p["box"], gt_box) for p in prompts]
        lo, hi = {"noisy_box_50_60": (0.5, 0.6), "noisy_box_60_70": (0.6, 0.7)}.get(
            prompt_type, (0.5, 1.0001)
        )
        assert all(lo <= iou < hi for iou in ious)
        if prompt_type == "gt_box":
            assert all(iou == 1.0 for iou in ious)
        else:
            assert any(not np.array_equal(p["box"], q["box"]) for p, q in zip(prompts, other))
    else:
        n = {"one_point": 1, "three_points": 3, "five_points": 5, "ten_points": 10}[prompt_type]
        for p in prompts:
            assert p["box"] is None and p["point_coords"].shape == (n, 2)
            assert p["point_labels"].dtype == np.int32
            assert np.all(
                mask[p["point_coords"][:, 1].astype(int), p["point_coords"][:, 0].astype(int)]
            )
        assert any(
            not np.array_equal(p["point_coords"], q["point_coords"]) for p, q in zip(prompts, other)
        )


def test_coarse_mask_differs_only_near_the_boundary():
    mask = disc(1024, (500, 540), 300)
    mask[:, :40] = True  # touches the left image border: no fraying there
    band_width = 3
    # Independent low-res GT: 4x4 block averages of the 1024 mask.
    low_gt = mask.reshape(256, 4, 256, 4).mean(axis=(1, 3)) >= 0.5
    # Chebyshev distance of every low-res pixel to the nearest pixel of the other label.
    to_outside = ndimage.distance_transform_cdt(low_gt, metric="chessboard")
    to_inside = ndimage.distance_transform_cdt(~low_gt, metric="chessboard")
    distance = np.where(low_gt, to_outside, to_inside)
    changed_total = 0
    for seed in range(3):
        coarse = coarse_mask(mask, np.random.default_rng(seed), out_size=256, band_width=band_width)
        assert coarse.shape == (256, 256) and coarse.dtype == bool
        changed = coarse != low_gt
        assert np.all(distance[changed] <= band_width)
        assert not changed[:, :5].any()  # the image border is not a boundary
        changed_total += changed.sum()
        assert (coarse & low_gt).sum() / (coarse | low_gt).sum() > 0.8
    assert changed_total > 100  # the noise is really there


def test_paste_object_pixel_exact():
    image = np.zeros((6, 6, 3), np.uint8)
    target = np.zeros((6, 6), bool)
    target[1:4, 1:4] = True  # rows 1-3, cols 1-3
    obj_image = np.full((3, 3, 3), 200, np.uint8)
    obj_mask = np.array([[1, 0, 0], [1, 1, 0], [1, 1, 1]], bool)  # lower-left triangle
    # Placed at (2, 2): object pixels land on (2,2) (3,2) (3,3) (4,2) (4,3) (4,4).
    pasted_expected = np.zeros((6, 6), bool)
    for r, c in [(2, 2), (3, 2), (3, 3), (4, 2), (4, 3), (4, 4)]:
        pasted_expected[r, c] = True

    out, new_target, pasted = paste_object(image, target, obj_image, obj_mask, (2, 2), "occluder")
    np.testing.assert_array_equal(pasted, pasted_expected)
    expected_target = target.copy()
    expected_target[2, 2] = expected_target[3, 2] = expected_target[3, 3] = False
    np.testing.assert_array_equal(new_target, expected_target)
    np.testing.assert_array_equal(out[..., 0] == 200, pasted_expected)

    out, new_target, _ = paste_object(image, target, obj_image, obj_mask, (2, 2), "occludee")
    np.testing.assert_array_equal(new_target, target)
    changed = np.zeros((6, 6), bool)
    changed[4, 2] = changed[4, 3] = changed[4, 4] = True  # only the part outside the target
    np.testing.assert_array_equal(out[..., 0] == 200, changed)
    assert not image.any()  # inputs untouched

    # Hanging over the top-left corner: only the object's bottom-right part lands.
    out, new_target, pasted = paste_object(image, target, obj_image, obj_mask, (-2, -1), "occluder")
    expected = np.zeros((6, 6), bool)
    expected[0, 0:2] = True  # object row 2, cols 1-2
    np.testing.assert_array_equal(pasted, expected)
    np.testing.assert_array_equal(new_target, target)  # no overlap with the target


@pytest.mark.parametrize("mode", ["occluder", "occludee"])
def test_occlude_updates_target_consistently(mode):
    image = np.zeros((96, 96, 3), np.uint8)
    target = disc(96, (48, 48), 20)
    occ_image = np.full((50, 70, 3), 255, np.uint8)  # one colour: the pasted area is readable
    occ_mask = np.zeros((50, 70), bool)
    occ_mask[10:40, 5:60] = True
    overlapped = 0
    for seed in range(10):
        out, new_target = occlude(
            image, target, occ_image, occ_mask, np.random.default_rng(seed), mode
        )
        assert out.shape == image.shape and out.dtype == np.uint8
        written = out[..., 0] > 0
        assert written.any()
        if mode == "occluder":
            np.testing.assert_array_equal(new_target, target & ~written)
            assert new_target.sum() >= 0.25 * target.sum()
            overlapped += (written & target).any()
        else:
            np.testing.assert_array_equal(new_target, target)
            assert not (written & target).any()
            # The object is placed over the target, so it shows right around it.
            overlapped += (ndimage.binary_dilation(target) & written).any()
    assert overlapped == 10


def test_occluder_never_empties_the_target():
    image = np.zeros((32, 32, 3), np.uint8)
    target = np.zeros((32, 32), bool)
    target[16, 16] = True  # any overlap covers it completely
    occ_mask = np.ones((20, 20), bool)
    out, new_target = occlude(
        image,
        target,
        np.full((20, 20, 3), 255, np.uint8),
        occ_mask,
        np.random.default_rng(0),
        "occluder",
    )
    np.testing.assert_array_equal(new_target, target)  # fell back to no occlusion
    assert not out.any()


@pytest.mark.parametrize("kind", RTS_KINDS)
def test_sample_rts_prompt_fixed_shapes(kind):
    mask = disc(256, (100, 140), 40)
    prompt = sample_rts_prompt(
        mask, np.random.default_rng(0), {kind: 1.0}, max_points=10, low_res=64
    )
    assert RTS_KINDS[prompt["kind"]] == kind
    assert prompt["box"].shape == (4,) and prompt["box"].dtype == np.float32
    assert prompt["point_coords"].shape == (10, 2) and prompt["point_coords"].dtype == np.float32
    assert prompt["point_labels"].shape == (10,) and prompt["point_labels"].dtype == np.int32
    assert prompt["mask_input"].shape == (64, 64) and prompt["mask_input"].dtype == np.float32
    num_points = {"one_point": 1, "three_points": 3, "five_points": 5, "ten_points": 10}.get(
        kind, 0
    )
    labels = prompt["point_labels"]
    assert np.all(labels[:num_points] == POSITIVE_LABEL) and np.all(
        labels[num_points:] == PAD_LABEL
    )
    assert not prompt["point_coords"][num_points:].any()
    used = prompt["point_coords"][:num_points].astype(int)
    assert np.all(mask[used[:, 1], used[:, 0]])
    assert prompt["box_valid"] == (kind in ("gt_box", "noisy_box"))
    if prompt["box_valid"]:
        assert reference_iou(prompt["box"], [100, 60, 180, 140]) >= 0.5
    else:
        assert not prompt["box"].any()
    assert prompt["mask_valid"] == (kind == "coarse_mask")
    if kind == "coarse_mask":
        values = prompt["mask_input"]
        assert set(np.unique(values)) == {-COARSE_MASK_LOGIT, COARSE_MASK_LOGIT}
        inside = values > 0
        low_gt = mask.reshape(64, 4, 64, 4).mean(axis=(1, 3)) >= 0.5
        assert (inside & low_gt).sum() / (inside | low_gt).sum() > 0.7
    else:
        assert not prompt["mask_input"].any()


def test_sample_rts_prompt_mixture_is_normalised():
    mask = disc(64, (30, 30), 10)
    rng = np.random.default_rng(0)
    kinds = [
        sample_rts_prompt(mask, rng, {"gt_box": 3, "one_point": 3}, low_res=16)["kind"]
        for _ in range(400)
    ]
    counts = np.bincount(kinds, minlength=len(RTS_KINDS))
    assert counts.sum() == counts[RTS_KINDS.index("gt_box")] + counts[RTS_KINDS.index("one_point")]
    assert 150 < counts[RTS_KINDS.index("gt_box")] < 250
    with pytest.raises(ValueError, match="unknown prompt kinds"):
        sample_rts_prompt(mask, rng, {"scribble": 1.0})
    with pytest.raises(ValueError, match="positive sum"):
        sample_rts_prompt(mask, rng, {"gt_box": 0.0})
