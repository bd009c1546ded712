import numpy as np
import pytest

from stablesam_jax.evaluation.metrics import (
    boundary_iou,
    boundary_iou_batch,
    boundary_width,
    mask_boundary,
    mask_iou,
    mask_iou_batch,
    stability_score,
)


def square(shape, top, left, size):
    mask = np.zeros(shape, dtype=bool)
    mask[top : top + size, left : left + size] = True
    return mask


def naive_boundary(mask, width):
    """Reference: `width` literal 3x3 erosions of the one-pixel zero-padded mask, as HQ-SAM does."""
    eroded = np.pad(mask, 1)
    for _ in range(width):
        padded = np.pad(eroded, 1, constant_values=True)  # cv2 ignores what lies outside
        h, w = eroded.shape
        shifted = [
            padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
            for dy in (-1, 0, 1)
            for dx in (-1, 0, 1)
        ]
        eroded = np.logical_and.reduce(shifted)
    return mask & ~eroded[1:-1, 1:-1]


def test_mask_iou_hand_cases():
    a = square((6, 6), 0, 0, 3)  # 9 px
    b = square((6, 6), 1, 1, 3)  # 9 px, overlap rows 1-2 x cols 1-2 = 4 px
    assert mask_iou(a, b) == pytest.approx(4 / 14)
    assert mask_iou(a, a) == 1.0
    empty = np.zeros((6, 6), bool)
    assert mask_iou(empty, empty) == 1.0
    assert mask_iou(a, empty) == 0.0
    one = np.zeros((6, 6), bool)
    one[5, 5] = True
    other = np.zeros((6, 6), bool)
    other[0, 5] = True
    assert mask_iou(one, one) == 1.0
    assert mask_iou(one, other) == 0.0


def test_mask_iou_batch_matches_hand_values():
    gt = square((6, 6), 0, 0, 3)
    preds = np.stack([gt, square((6, 6), 1, 1, 3), np.zeros((6, 6), bool)])
    np.testing.assert_allclose(mask_iou_batch(preds, gt), [1.0, 4 / 14, 0.0])
    np.testing.assert_allclose(mask_iou_batch(np.zeros((2, 4, 4), bool), np.zeros((4, 4))), [1, 1])


def test_boundary_width_from_diagonal():
    assert boundary_width((30, 40)) == 1  # diagonal 50 -> 0.02 * 50 = 1
    assert boundary_width((300, 400)) == 10  # diagonal 500
    assert boundary_width((3000, 4000)) == 100
    assert boundary_width((3, 4)) == 1  # 0.1 rounds to 0, floored at 1
    assert boundary_width((600, 800), dilation_ratio=0.01) == 10


def test_boundary_of_interior_square_counted_by_hand():
    mask = square((12, 12), 3, 3, 6)
    ring_1 = mask_boundary(mask, 1)
    assert ring_1.sum() == 36 - 16  # 6x6 minus its 4x4 interior
    assert not ring_1[4:8, 4:8].any() and ring_1[3, 3:9].all() and ring_1[3:9, 8].all()
    assert mask_boundary(mask, 2).sum() == 36 - 4
    assert mask_boundary(mask, 3).sum() == 36  # all of it: nothing survives 3 erosions


def test_border_pixels_count_as_boundary():
    corner = square((10, 10), 0, 0, 6)
    band = mask_boundary(corner, 1)
    expected = corner.copy()
    expected[1:5, 1:5] = False  # only pixels >= 1 away from image edge and background survive
    np.testing.assert_array_equal(band, expected)
    full = np.ones((5, 5), bool)
    expected = full.copy()
    expected[1:4, 1:4] = False
    np.testing.assert_array_equal(mask_boundary(full, 1), expected)


def test_one_pixel_and_empty_masks():
    one = np.zeros((7, 7), bool)
    one[3, 3] = True
    np.testing.assert_array_equal(mask_boundary(one, 1), one)
    empty = np.zeros((7, 7), bool)
    assert not mask_boundary(empty, 2).any()
    assert boundary_iou(empty, empty) == 1.0
    assert boundary_iou(one, empty) == 0.0
    assert boundary_iou(one, one) == 1.0


@pytest.mark.parametrize("width", [1, 2, 4])
def test_boundary_matches_literal_iterated_erosion(width):
    rng = np.random.default_rng(width)
    for _ in range(5):
        mask = rng.random((23, 31)) < 0.7
        np.testing.assert_array_equal(mask_boundary(mask, width), naive_boundary(mask, width))


def test_boundary_iou_of_shifted_squares_by_hand():
    gt = square((12, 12), 2, 2, 6)  # 12x12 -> band width 1
    pred = square((12, 12), 2, 3, 6)  # shifted one column right
    # Rings of 20 px each; they share rows 2 and 7 over columns 3-7 (10 px) and no side pixel.
    assert boundary_iou(pred, gt) == pytest.approx(10 / 30)
    assert mask_iou(pred, gt) == pytest.approx(30 / 42)
    np.testing.assert_allclose(boundary_iou_batch(np.stack([pred, gt]), gt), [1 / 3, 1.0])


def test_boundary_band_width_follows_the_ground_truth_image():
    # 300x400 -> width 10: a 30x30 square's band is everything but its 10x10 core.
    gt = square((300, 400), 100, 100, 30)
    pred = square((300, 400), 100, 100, 30)
    pred[115, 115] = False  # a hole in the core creates new boundary around it
    gt_band = 900 - 100
    # Every core pixel (rows/cols 110-119) lies within 10 px of the hole, so no pixel of pred
    # survives erosion: its band is all 899 of its pixels and contains the GT band.
    pred_band = 900 - 1
    assert boundary_iou(pred, gt) == pytest.approx(gt_band / pred_band)


def test_stability_score_by_hand():
    masks = np.stack([square((8, 8), 1, 1, 3)] * 4)
    assert stability_score(masks) == 1.0
    disjoint = np.zeros((3, 8, 8), bool)
    disjoint[0, 0, 0] = True  # 1 px
    disjoint[1, 2, 0:2] = True  # 2 px
    disjoint[2, 5, 0:3] = True  # 3 px; union 6 px
    assert stability_score(disjoint) == pytest.approx((1 / 6 + 2 / 6 + 3 / 6) / 3)
    nested = np.stack([square((8, 8), 0, 0, 2), square((8, 8), 0, 0, 4)])  # 4 px inside 16 px
    assert stability_score(nested) == pytest.approx((4 / 16 + 1) / 2)
    assert stability_score(np.zeros((5, 8, 8), bool)) == 1.0
    with pytest.raises(ValueError):
        stability_score(np.zeros((8, 8), bool))
