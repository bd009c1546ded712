"""Big prompt batches on the serving runtime run in chunks: `ExportedSam.decode` with a
(monkeypatched) small device budget gives the outputs of the unchunked call, one decoder shape
for every chunk."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from stablesam_jax.modeling import SAM_VARIANTS, Sam
from stablesam_jax.serving import runtime as serving
from stablesam_jax.serving.export import export_model
from stablesam_jax.utils import chunking


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = nnx.eval_shape(lambda: Sam(SAM_VARIANTS["vit_t"], rngs=nnx.Rngs(0), model_type="vit_t"))
    rng = np.random.default_rng(0)
    for _, var in nnx.iter_graph(model):
        if isinstance(var, nnx.Variable):
            var.set_value(jnp.asarray(0.05 * rng.standard_normal(var.shape), var.dtype))
    out = tmp_path_factory.mktemp("export")
    export_model(model, str(out), platforms=("cpu",))
    sam = serving.ExportedSam(out, prompt_buckets=(4, 16))
    image = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    return sam, sam.encode(image)


def test_a_chunked_decode_equals_the_unchunked_call(exported, monkeypatch):
    sam, embedding = exported
    rng = np.random.default_rng(1)
    coords, labels = rng.uniform(0, 50, (9, 3, 2)), rng.integers(0, 2, (9, 3))
    corners = rng.uniform(0, 50, (9, 2, 2))
    boxes = np.concatenate([corners.min(1), corners.max(1)], axis=1)
    whole = sam.decode(embedding, coords, labels, boxes)
    slices = [
        sam.decode(embedding, coords[i : i + 4], labels[i : i + 4], boxes[i : i + 4])
        for i in (0, 4, 8)
    ]
    traces = serving.TRACE_COUNTS["decoder"]

    rows, decoder = [], sam._decoder

    def counted(weights, features, point_coords, *args):
        rows.append(point_coords.shape[0])
        return decoder(weights, features, point_coords, *args)

    monkeypatch.setattr(sam, "_decoder", counted)
    monkeypatch.setattr(chunking, "device_budget", lambda device: 0)
    chunked = sam.decode(embedding, coords, labels, boxes)
    assert rows == [4, 4, 4]
    assert serving.TRACE_COUNTS["decoder"] == traces  # the 4-row decoder, compiled already
    for i, out in enumerate(chunked):
        np.testing.assert_array_equal(out, np.concatenate([s[i] for s in slices]))
    # Against the one 16-row call: another batch size rounds differently on XLA's CPU kernels.
    np.testing.assert_array_equal(chunked[0], whole[0])
    np.testing.assert_allclose(chunked[1], whole[1], atol=1e-5)
    np.testing.assert_allclose(chunked[2], whole[2], atol=1e-5)
