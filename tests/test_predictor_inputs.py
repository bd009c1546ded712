"""The catalogue of bad inputs for the library's model entry points: `SamPredictor` (predict,
predict_batch, set_image, set_embedding), the automatic mask generator and the evaluation
predictor all refuse them through `utils.validation`, with a message that says what was given
and what is expected, and leave their inputs and the predictor's current image untouched."""

import numpy as np
import pytest

from stablesam_jax import SamAutomaticMaskGenerator, SamPredictor, build_sam
from stablesam_jax.evaluation import PromptBatch, SamEvalPredictor
from stablesam_jax.utils.embedding import ImageEmbedding
from stablesam_jax.utils.validation import InputError

H, W = 48, 64
IMAGE = np.zeros((H, W, 3), np.uint8)
POINT, ONE = np.array([[10.0, 10.0]]), np.array([1])
BOX = np.array([5.0, 5.0, 30.0, 20.0])
LOW = np.zeros((1, 64, 64), np.float32)  # vit_t: 16x16 embeddings, 64x64 low-res masks


@pytest.fixture(scope="module")
def model():
    return build_sam("vit_t", seed=0)


@pytest.fixture(scope="module")
def predictor(model):
    predictor = SamPredictor(model)
    predictor.set_image(IMAGE)
    return predictor


def _embedding(shape=(16, 16, 256), model_type="vit_t", original=(H, W), given=(192, 256)):
    return ImageEmbedding(np.zeros(shape, np.float32), original, given, model_type)


# (name, method, kwargs, phrase)
CASES = [
    ("label_5", "predict", dict(point_coords=POINT, point_labels=[5]), "got 5"),
    ("label_2", "predict", dict(point_coords=POINT, point_labels=[2]), "1 (foreground), 0"),
    ("label_fraction", "predict", dict(point_coords=POINT, point_labels=[0.7]), "got 0.7"),
    ("label_pad_from_a_user", "predict", dict(point_coords=POINT, point_labels=[-2]), "got -2"),
    ("labels_without_coords", "predict", dict(point_labels=ONE), "point_coords must be given"),
    ("coords_without_labels", "predict", dict(point_coords=POINT), "point_labels must be given"),
    ("point_nan", "predict", dict(point_coords=[[np.nan, 1.0]], point_labels=ONE), "finite"),
    ("point_outside", "predict", dict(point_coords=[[70.0, 1.0]], point_labels=ONE), "64x48"),
    ("coords_words", "predict", dict(point_coords="abc", point_labels=ONE), "array of numbers"),
    ("coords_ragged", "predict", dict(point_coords=[[1, 2], [3]], point_labels=[1, 1]), "numbers"),
    (
        "coords_and_labels_disagree",
        "predict",
        dict(point_coords=POINT, point_labels=[1, 1]),
        "[B, N]",
    ),
    ("two_boxes_to_predict", "predict", dict(box=np.stack([BOX, BOX])), "use predict_batch"),
    ("box_of_5", "predict", dict(box=[0, 0, 5, 5, 5]), "box must be 4 numbers"),
    ("box_nan", "predict", dict(box=[0, np.nan, 5, 5]), "NaN or inf"),
    ("box_flipped", "predict", dict(box=[30, 5, 5, 20]), "x0 <= x1"),
    ("box_outside", "predict", dict(box=[0, 0, 65, 20]), "lies outside the 64x48 (WxH) image"),
    ("mask_nan", "predict", dict(box=BOX, mask_input=np.full((1, 64, 64), np.nan)), "finite"),
    ("mask_wrong_size", "predict", dict(box=BOX, mask_input=np.zeros((1, 32, 32))), "(64, 64)"),
    ("two_masks_to_predict", "predict", dict(mask_input=np.zeros((2, 64, 64))), "predict_batch"),
    (
        "batch_counts_disagree",
        "predict_batch",
        dict(point_coords=np.zeros((2, 1, 2)), point_labels=np.ones((2, 1)), boxes=[BOX] * 3),
        "2 point sets, 3 boxes",
    ),
    (
        "batch_masks_disagree",
        "predict_batch",
        dict(boxes=[BOX] * 2, mask_input=np.zeros((3, 64, 64))),
        "2 boxes, 3 mask inputs",
    ),
    ("batch_box_not_2d", "predict_batch", dict(boxes=BOX), "boxes must be [B, 4]"),
    ("batch_coords_2d", "predict_batch", dict(point_coords=POINT, point_labels=ONE), "[B, N, 2]"),
    ("batch_empty", "predict_batch", dict(boxes=np.zeros((0, 4))), "no prompts"),
    ("image_1px_high", "set_image", dict(image=np.zeros((1, 64, 3), np.uint8)), "at least 2 px"),
    ("image_too_thin", "set_image", dict(image=np.zeros((2, 2000, 3), np.uint8)), "too thin"),
    ("image_float", "set_image", dict(image=np.zeros((8, 8, 3), np.float32)), "uint8"),
    ("image_gray", "set_image", dict(image=np.zeros((8, 8), np.uint8)), "HxWx3"),
    ("embedding_of_vit_b", "set_embedding", dict(embedding=_embedding((64, 64, 256))), "(16, 16"),
    (
        "embedding_other_type",
        "set_embedding",
        dict(embedding=_embedding(model_type="vit_b")),
        "vit_b",
    ),
    ("embedding_bad_sizes", "set_embedding", dict(embedding=_embedding(given=(0, 256))), "sizes"),
]


@pytest.mark.parametrize("name,method,kwargs,phrase", CASES, ids=[c[0] for c in CASES])
def test_predictor_refuses(predictor, name, method, kwargs, phrase):
    copies = {k: np.array(v, copy=True) for k, v in kwargs.items() if isinstance(v, np.ndarray)}
    features, size = predictor.features, predictor.original_size
    with pytest.raises(InputError) as raised:
        getattr(predictor, method)(**kwargs)
    assert phrase in str(raised.value)
    for key, copy in copies.items():
        np.testing.assert_array_equal(kwargs[key], copy)
    # The current image survives a refused call.
    assert predictor.is_image_set and predictor.features is features
    assert predictor.original_size == size


def test_good_prompts_still_work(predictor):
    masks, iou, low = predictor.predict(POINT, ONE, BOX, LOW, multimask_output=False)
    assert masks.shape == (1, H, W) and np.isfinite(iou).all()
    masks, _, _ = predictor.predict(POINT, np.array([-1]))  # "not a point" is a user label too
    assert masks.shape == (3, H, W)


def test_generator_refuses_images(model):
    generator = SamAutomaticMaskGenerator(model, points_per_side=2)
    with pytest.raises(InputError, match="at least 2 px"):
        generator.generate(np.zeros((64, 1, 3), np.uint8))
    with pytest.raises(InputError, match="uint8"):
        generator.generate(np.zeros((8, 8, 3), np.float64))


def test_eval_predictor_refuses_bad_images_and_prompts(model):
    predictor = SamEvalPredictor(model)
    with pytest.raises(InputError, match="at least 2 px"):
        predictor.embed([np.zeros((1, 8, 3), np.uint8)])
    [embedding] = predictor.embed([IMAGE])
    prompts = PromptBatch.from_boxes(np.array([[0.0, 0.0, 90.0, 20.0]]))
    with pytest.raises(InputError, match="lies outside the 64x48"):
        predictor.predict(None, embedding, prompts)
    labels = np.array([[1, 3]], np.int32)
    prompts = PromptBatch(
        np.zeros((1, 2, 2), np.float32), labels, np.zeros((1, 4)), np.zeros(1, bool)
    )
    with pytest.raises(InputError, match="or -2 \\(an empty slot\\); got 3"):
        predictor.predict(None, embedding, prompts)
