import contextlib
import copy
import io
import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from stablesam_jax.evaluation.coco import detections_for_coco, evaluate_coco

HEIGHT, WIDTH = 48, 64

# pycocotools' decode trips a numpy 2 deprecation warning that is not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def rasterize(segmentation):
    if isinstance(segmentation, list):  # polygons
        rles = mask_utils.frPyObjects(segmentation, HEIGHT, WIDTH)
        return mask_utils.decode(mask_utils.merge(rles)).astype(bool)
    return mask_utils.decode(mask_utils.frPyObjects(segmentation, HEIGHT, WIDTH)).astype(bool)


def uncompressed_rle(mask):
    """COCO's uncompressed RLE (column-major run lengths, starting with a run of zeros)."""
    flat = mask.T.reshape(-1).astype(np.uint8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts = [0, *counts]
    return {"size": [HEIGHT, WIDTH], "counts": counts}


def box_mask(top, left, bottom, right):
    mask = np.zeros((HEIGHT, WIDTH), bool)
    mask[top:bottom, left:right] = True
    return mask


@pytest.fixture
def coco_set(tmp_path):
    """Three images, two categories, polygon and RLE instances and one crowd region.

    Returns (annotation file, image dir, {image index: non-crowd GT masks in annotation order}).
    """
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    instances = {
        1: [
            (1, [[5, 5, 30, 5, 30, 25, 5, 25]], 0),  # rectangle polygon
            (2, [[40, 10, 60, 40, 40, 40]], 0),  # triangle polygon
        ],
        2: [
            (2, uncompressed_rle(box_mask(10, 8, 40, 30) | box_mask(20, 30, 30, 50)), 0),
            (1, uncompressed_rle(box_mask(2, 40, 12, 60)), 1),  # crowd: never prompted
            (1, [[35, 20, 60, 20, 60, 45, 35, 45]], 0),
        ],
        3: [
            (1, [[4, 4, 24, 4, 24, 40, 4, 40]], 0),
            (1, [[16, 10, 44, 10, 44, 30, 16, 30]], 0),  # overlaps the previous one
            (2, [[50, 2, 62, 2, 62, 14, 50, 14]], 0),
        ],
    }
    images, annotations, gt_masks = [], [], {}
    rng = np.random.default_rng(0)
    for image_id, anns in instances.items():
        pixels = rng.integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        pixels[0, 0] = image_id  # lets the test predictors tell images apart
        Image.fromarray(pixels).save(image_dir / f"img{image_id}.png")
        images.append(
            {"id": image_id, "file_name": f"img{image_id}.png", "height": HEIGHT, "width": WIDTH}
        )
        gt_masks[image_id] = []
        for category, segmentation, crowd in anns:
            mask = rasterize(segmentation)
            rows, cols = np.nonzero(mask)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category,
                    "segmentation": segmentation,
                    "area": float(mask.sum()),
                    "bbox": [
                        float(cols.min()),
                        float(rows.min()),
                        float(np.ptp(cols) + 1),
                        float(np.ptp(rows) + 1),
                    ],
                    "iscrowd": crowd,
                }
            )
            if not crowd:
                gt_masks[image_id].append(mask)
    dataset = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "thing"}, {"id": 2, "name": "stuff"}],
    }
    annotation_file = tmp_path / "instances.json"
    annotation_file.write_text(json.dumps(dataset))
    return str(annotation_file), str(image_dir), gt_masks


def oracle(gt_masks, damage=None, seen_boxes=None):
    def predict(image, boxes):
        assert image.dtype == np.uint8 and image.shape == (HEIGHT, WIDTH, 3)
        assert boxes.dtype == np.float32 and boxes.shape[1] == 4
        masks = np.stack(gt_masks[int(image[0, 0, 0])])
        assert len(masks) == len(boxes)
        if seen_boxes is not None:
            seen_boxes.append((masks, boxes))
        if damage is not None:
            masks = damage(masks)
        return masks, np.ones(len(masks))

    return predict


def direct_cocoeval(annotation_file, detections, image_ids):
    """COCOeval run here on the same detections, without going through the module."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(annotation_file)
        dt = gt.loadRes(copy.deepcopy(detections))
        evaluator = COCOeval(gt, dt, "segm")
        evaluator.params.imgIds = image_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats[0] * 100, evaluator.stats[1] * 100


def continuous_iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ix * iy
    return ix * iy / union


def test_perfect_masks_score_100_and_boxes_lie_in_the_bin(coco_set):
    annotation_file, image_dir, gt_masks = coco_set
    seen = []
    result = evaluate_coco(
        annotation_file,
        image_dir,
        oracle(gt_masks, seen_boxes=seen),
        iou_bin=(0.6, 0.7),
        progress=False,
    )
    assert result["segm_mAP"] == pytest.approx(100.0)
    assert result["segm_mAP50"] == pytest.approx(100.0)
    assert result["num_instances"] == 7  # 8 annotations, one crowd
    assert result["iou_bin"] == [0.6, 0.7]
    for masks, boxes in seen:
        for mask, box in zip(masks, boxes):
            rows, cols = np.nonzero(mask)
            tight = [cols.min(), rows.min(), cols.max(), rows.max()]
            assert 0.6 <= continuous_iou(box, tight) < 0.7


def shift_right(masks):
    return np.roll(masks, 6, axis=2)


def test_damaged_predictor_scores_lower_and_matches_direct_cocoeval(coco_set):
    annotation_file, image_dir, gt_masks = coco_set
    predict = oracle(gt_masks, damage=shift_right)
    result = evaluate_coco(annotation_file, image_dir, predict, seed=3, progress=False)
    assert result["segm_mAP"] < 90

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(annotation_file)
    detections, count = detections_for_coco(
        gt, image_dir, predict, (0.5, 0.6), seed=3, image_ids=[1, 2, 3]
    )
    assert count == 7 and len(detections) == 7
    direct_map, direct_map50 = direct_cocoeval(annotation_file, detections, [1, 2, 3])
    assert result["segm_mAP"] == pytest.approx(direct_map)
    assert result["segm_mAP50"] == pytest.approx(direct_map50)
    # Each detection is the shifted GT mask of its instance, with the instance's category.
    expected = [m for image_id in (1, 2, 3) for m in shift_right(np.stack(gt_masks[image_id]))]
    for det, mask in zip(detections, expected):
        np.testing.assert_array_equal(mask_utils.decode(det["segmentation"]).astype(bool), mask)
    assert [d["category_id"] for d in detections] == [1, 2, 2, 1, 1, 1, 2]


def test_same_seed_same_boxes_and_max_images(coco_set):
    annotation_file, image_dir, gt_masks = coco_set
    first, second = [], []
    evaluate_coco(
        annotation_file, image_dir, oracle(gt_masks, seen_boxes=first), seed=5, progress=False
    )
    result = evaluate_coco(
        annotation_file,
        image_dir,
        oracle(gt_masks, seen_boxes=second),
        seed=5,
        max_images=1,
        progress=False,
    )
    np.testing.assert_array_equal(first[0][1], second[0][1])
    assert len(second) == 1 and result["num_instances"] == 2
    assert result["segm_mAP"] == pytest.approx(100.0)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_image_names_its_path(coco_set, tmp_path, damage):
    annotation_file, image_dir, gt_masks = coco_set
    broken = tmp_path / "images" / "img2.png"
    if damage == "garbage":
        broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
    else:
        broken.write_bytes(broken.read_bytes()[:1000])
    with pytest.raises(OSError, match=r"cannot read image .*img2\.png"):
        evaluate_coco(annotation_file, image_dir, oracle(gt_masks), progress=False)
