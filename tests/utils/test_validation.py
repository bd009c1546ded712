"""`utils.validation`, the one checker of images, prompts and embeddings: what it accepts, what it
returns, and that it imports no flax or model code (the serving runtime uses it)."""

import subprocess
import sys

import numpy as np
import pytest

from stablesam_jax.constants import PAD_LABEL
from stablesam_jax.utils.embedding import ImageEmbedding
from stablesam_jax.utils.validation import (
    InputError,
    single_prompt,
    validate_embedding,
    validate_image,
    validate_labels,
    validate_prompts,
)


def test_prompts_come_back_batched_and_typed():
    p = validate_prompts(
        [[[1, 2], [3, 4]]],
        [[1, 0]],
        [[0, 0, 10, 5]],
        (5, 10),
        np.zeros((1, 1, 8, 8)),
        mask_size=(8, 8),
    )
    assert p.count == 1 and p.point_labels.dtype == np.int32
    assert p.point_coords.shape == (1, 2, 2) and p.boxes.shape == (1, 4)
    assert p.mask_input.shape == (1, 8, 8)  # the official [B, 1, h, w] layout is accepted
    assert validate_prompts(None, None, None, (5, 10)).count == 1  # no prompt: one empty row


def test_edges_of_the_image_are_inside():
    validate_prompts([[[0, 0], [10, 5]]], [[1, 1]], [[0, 0, 10, 5]], (5, 10))
    with pytest.raises(InputError, match="lies outside the 10x5"):
        validate_prompts([[[10.5, 0]]], [[1]], None, (5, 10))


def test_padding_is_allowed_only_where_asked():
    coords, labels = [[[0, 0], [-50, 900]]], [[1, PAD_LABEL]]
    with pytest.raises(InputError, match="got -2"):
        validate_prompts(coords, labels, None, (5, 10))
    # A padded slot may sit anywhere (the decoder ignores it), but not at NaN.
    validate_prompts(coords, labels, None, (5, 10), allow_pad=True)
    with pytest.raises(InputError, match="finite"):
        validate_prompts([[[0, 0], [np.nan, 0]]], labels, None, (5, 10), allow_pad=True)
    # Rows without a box (box_valid False) are padding and go unchecked.
    boxes = [[0, 0, 5, 5], [-1, -1, -1, -1]]
    validate_prompts(None, None, boxes, (5, 10), box_valid=[True, False])
    with pytest.raises(InputError, match="lies outside"):
        validate_prompts(None, None, boxes, (5, 10), box_valid=[True, True])


@pytest.mark.parametrize(
    "labels,ok",
    [
        ([1, 0, -1], True),
        ([1.0, 0.0], True),
        ([True, False], True),
        ([0.5], False),
        ([np.nan], False),
    ],
)
def test_labels(labels, ok):
    if ok:
        assert validate_labels(labels).dtype == np.int32
    else:
        with pytest.raises(InputError, match="point labels must be"):
            validate_labels(labels)


def test_thin_images_name_the_smallest_side_that_works():
    validate_image(np.zeros((2, 1000, 3), np.uint8), 256)  # resizes to 1x256
    with pytest.raises(InputError, match="short side must be at least 4 px"):
        validate_image(np.zeros((2, 2000, 3), np.uint8), 256)
    validate_image(np.zeros((4, 2000, 3), np.uint8), 256)
    with pytest.raises(InputError, match="at least 2 px"):
        validate_image(np.zeros((5, 1, 3), np.uint8))


def test_single_prompt_adds_the_batch_axis():
    coords, labels, box, mask = single_prompt([[1, 2]], [1], [0, 0, 3, 3], np.zeros((8, 8)))
    assert coords.shape == (1, 1, 2) and labels.shape == (1, 1)
    assert box.shape == (1, 4) and mask.shape == (1, 8, 8)
    with pytest.raises(InputError, match="box must be 4 numbers") as raised:
        single_prompt(None, None, [0, 0, 3], None)
    assert "predict_batch" not in str(raised.value)  # only a batch of boxes gets that hint


def test_embeddings_of_a_batch_and_of_unnamed_models():
    batch = ImageEmbedding(np.zeros((3, 4, 4, 8)), (10, 20), (32, 64), "vit_t", index=2)
    validate_embedding(batch, model_type="vit_t", feature_shape=(4, 4, 8), img_size=64)
    unnamed = ImageEmbedding(np.zeros((4, 4, 8)), (10, 20), (32, 64))
    validate_embedding(unnamed, model_type="custom", feature_shape=(4, 4, 8), img_size=64)
    with pytest.raises(InputError, match="input_size at most 32 px"):
        validate_embedding(unnamed, model_type="vit_t", feature_shape=(4, 4, 8), img_size=32)


def test_imports_no_flax_and_no_model_code():
    code = (
        "import sys, stablesam_jax.utils.validation; "
        "bad = [m for m in ('flax', 'stablesam_jax.modeling') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
