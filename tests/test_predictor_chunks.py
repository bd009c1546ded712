"""Big prompt batches run in chunks: `SamPredictor.predict_batch` with a (monkeypatched) small
device budget gives the outputs of the unchunked call, one compiled shape for every chunk, and
refuses, before running anything, outputs that would not fit the host."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from stablesam_jax import predictor as predictor_module
from stablesam_jax.modeling import SAM_VARIANTS, Sam
from stablesam_jax.predictor import SamPredictor
from stablesam_jax.utils import chunking


@pytest.fixture(scope="module")
def predictor():
    model = nnx.eval_shape(lambda: Sam(SAM_VARIANTS["vit_t"], rngs=nnx.Rngs(0), model_type="vit_t"))
    rng = np.random.default_rng(0)
    for _, var in nnx.iter_graph(model):
        if isinstance(var, nnx.Variable):
            var.set_value(jnp.asarray(0.05 * rng.standard_normal(var.shape), var.dtype))
    predictor = SamPredictor(model, prompt_buckets=(4, 16))
    predictor.set_image(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8))
    return predictor


def _prompts(n=10):
    rng = np.random.default_rng(1)
    coords = rng.uniform(0, 60, (n, 2, 2))
    labels = rng.integers(0, 2, (n, 2))
    corners = rng.uniform(0, 60, (n, 2, 2))
    boxes = np.concatenate([corners.min(1), corners.max(1)], axis=1)
    return coords, labels, boxes


@pytest.fixture
def decode_calls(monkeypatch):
    """The row count of every decoder call."""
    rows, decode = [], predictor_module._decode

    def counted(*args, **kwargs):
        rows.append(args[3].shape[0])
        return decode(*args, **kwargs)

    monkeypatch.setattr(predictor_module, "_decode", counted)
    return rows


@pytest.mark.parametrize(
    "options",
    [{"multimask_output": False, "return_logits": True}, {"return_intermediates": True}],
)
def test_a_chunked_batch_equals_the_unchunked_call(predictor, decode_calls, monkeypatch, options):
    coords, labels, boxes = _prompts()
    whole = predictor.predict_batch(coords, labels, boxes, **options)
    slices = [
        predictor.predict_batch(coords[i : i + 4], labels[i : i + 4], boxes[i : i + 4], **options)
        for i in (0, 4, 8)
    ]
    assert decode_calls == [16, 4, 4, 4]
    decode_calls.clear()

    # No room for more than one prompt: chunks of the smallest bucket (4 rows).
    monkeypatch.setattr(chunking, "device_budget", lambda device: 0)
    chunked = predictor.predict_batch(coords, labels, boxes, **options)
    assert decode_calls == [4, 4, 4]

    # Each chunk is exactly the call on its slice of the prompts.
    for i, out in enumerate(chunked[:3]):
        np.testing.assert_array_equal(out, np.concatenate([s[i] for s in slices]))
    if options.get("return_intermediates"):
        for name, value in chunked[3].items():
            np.testing.assert_array_equal(value, np.concatenate([s[3][name] for s in slices]))
    # Against the one 16-row call: XLA's CPU kernels round differently for another batch size
    # (measured: at most 3.4e-7 in the logits), so the masks agree and the floats nearly.
    masks, iou, low_res = chunked[:3]
    if masks.dtype == bool:
        np.testing.assert_array_equal(masks, whole[0])
    else:
        np.testing.assert_allclose(masks, whole[0], atol=1e-5)
    np.testing.assert_allclose(iou, whole[1], atol=1e-5)
    np.testing.assert_allclose(low_res, whole[2], atol=1e-5)


def test_outputs_too_big_for_the_host_are_refused_before_anything_runs(
    predictor, decode_calls, monkeypatch
):
    coords, labels, boxes = _prompts()
    # 3 bool masks of 60x80 plus 3 low-res maps of 64x64 float32 are 63 KiB a prompt.
    monkeypatch.setattr(chunking, "host_available", lambda: 400_000)
    with pytest.raises(MemoryError) as error:
        predictor.predict_batch(coords, labels, boxes)
    message = str(error.value)
    assert "10 prompts" in message and "3 masks of 60x80" in message
    assert "5 prompts fit in one call" in message
    assert decode_calls == []
