"""Big prompt batches in the evaluation run in chunks: `SamEvalPredictor.predict` with a
(monkeypatched) small device budget gives the masks of the unchunked call, one decoder shape for
every chunk. Stable-SAM, so the DRP weights are stitched too."""

import numpy as np
import pytest
from random_models import random_stable_sam

from stablesam_jax.evaluation import predictors as predictors_module
from stablesam_jax.evaluation.interface import PromptBatch, Sample
from stablesam_jax.evaluation.predictors import SamEvalPredictor
from stablesam_jax.utils import chunking


@pytest.fixture(scope="module")
def predictor():
    model = random_stable_sam(0)
    return SamEvalPredictor(model, max_points=2)


def test_a_chunked_prediction_equals_the_unchunked_call(predictor, monkeypatch):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    sample = Sample(image, None, "x")
    (embedding,) = predictor.embed([image])
    corners = rng.uniform(0, 40, (7, 2, 2))
    boxes = np.concatenate([corners.min(1), corners.max(1)], axis=1)
    prompts = PromptBatch.from_boxes(boxes, max_points=2)
    whole = predictor.predict(sample, embedding, prompts)

    rows, decode = [], predictors_module._decode

    def counted(*args, **kwargs):
        rows.append(args[4].shape[0])
        return decode(*args, **kwargs)

    monkeypatch.setattr(predictors_module, "_decode", counted)
    monkeypatch.setattr(chunking, "device_budget", lambda device: 0)
    chunked = predictor.predict(sample, embedding, prompts)
    # One prompt per device fits: chunks of the device count, the last one padded to it.
    assert rows == [predictor.num_devices] * -(-7 // predictor.num_devices)
    np.testing.assert_array_equal(chunked.masks, whole.masks)
    np.testing.assert_allclose(chunked.iou_predictions, whole.iou_predictions, atol=1e-5)
    assert chunked.drp_a1 is not None and chunked.drp_a1.shape == (7,)
    np.testing.assert_allclose(chunked.drp_a1, whole.drp_a1, atol=1e-5)
    assert chunked.drp_a2 is not None and chunked.drp_a2.shape == (7,)
    np.testing.assert_allclose(chunked.drp_a2, whole.drp_a2, atol=1e-5)
