"""Exports of HQ-SAM (the embedding carries the early encoder features) and TinyViT models, run
by the jax+numpy runtime and compared with `SamPredictor` on the same weights."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from stablesam_jax import SamPredictor
from stablesam_jax.checkpoint import path_name
from stablesam_jax.modeling import SAM_VARIANTS, Sam
from stablesam_jax.serving import runtime as serving
from stablesam_jax.serving.export import export_model

POINTS = np.array([[[40.0, 30.0], [100.0, 90.0]], [[150.0, 20.0], [10.0, 110.0]]])
LABELS = np.array([[1, 0], [1, 1]])
BOXES = np.array([[10.0, 5.0, 120.0, 100.0], [60.0, 10.0, 190.0, 80.0]])


def _random_model(model_type: str) -> Sam:
    """Every weight random (BatchNorm variances positive), built abstractly: op-by-op
    initialization costs many seconds of compiling on CPU."""
    model = nnx.eval_shape(
        lambda: Sam(SAM_VARIANTS[model_type], rngs=nnx.Rngs(0), model_type=model_type)
    )
    rng = np.random.default_rng(5)
    for path, var in nnx.iter_graph(model):
        if isinstance(var, nnx.Variable):
            name = path_name(path)
            value = rng.standard_normal(var.shape).astype(np.float32)
            if "positional_encoding_gaussian_matrix" not in name:
                value *= 0.05
            if name.endswith("running_var"):
                value = 1.0 + np.abs(value)
            elif name.endswith(("scale", "weight")) and "norm" in name:
                value += 1.0
            var.set_value(jnp.asarray(value, var.dtype))
    return model


@pytest.fixture(scope="module", params=["hq_vit_t", "vit_tiny_t"])
def exported(request, tmp_path_factory):
    model = _random_model(request.param)
    out = tmp_path_factory.mktemp(request.param)
    export_model(model, str(out), platforms=("cpu",))
    image = (np.random.default_rng(0).random((120, 200, 3)) * 255).astype(np.uint8)
    return model, out, image


def _close(got, ref):
    scale = max(float(np.abs(ref).max()), 1.0)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * scale)


def test_export_runs_like_the_predictor(exported):
    model, out, image = exported
    cfg = model.config
    manifest = json.loads((out / serving.MANIFEST_FILE).read_text())
    assert manifest["hq"] == cfg.hq
    assert manifest["embedding_dim"] == 256 + (cfg.early_dim if cfg.hq else 0)
    sam = serving.ExportedSam(out)
    embedding = sam.encode(image)
    predictor = SamPredictor(model)
    predictor.set_image(image)
    _close(embedding.features, np.asarray(predictor.features))
    # Each option compiles both sides; SAM's own options are tested by test_export.py.
    options = [(True, False)] + ([(False, False), (False, True)] if cfg.hq else [])
    for multimask, hq_only in options:
        kwargs = dict(multimask_output=multimask, return_logits=True)
        if hq_only:
            kwargs["hq_token_only"] = True
        logits, iou, low = sam.decode(embedding, POINTS, LABELS, BOXES, **kwargs)
        ref = predictor.predict_batch(POINTS, LABELS, BOXES, **kwargs)
        masks_per_prompt = 1 if cfg.hq or not multimask else 3
        assert logits.shape == (2, masks_per_prompt, 120, 200)
        for got, want in zip((logits, iou, low), ref):
            assert got.shape == want.shape
            _close(got, want)


def test_hq_token_only_and_embedding_width_are_checked(exported):
    model, out, _ = exported
    sam = serving.ExportedSam(out, load_encoder=False)
    g = model.config.image_embedding_size
    if model.config.hq:
        sam_width = serving.Embedding(
            np.zeros((g, g, 256), np.float32), (10, 10), (256, 256), "hq_vit_t", sam.encoder_id
        )
        with pytest.raises(serving.ServingError, match="early encoder features"):
            sam.decode(sam_width, boxes=np.array([[0, 0, 5, 5]]))
    else:
        embedding = serving.Embedding(
            np.zeros((g, g, 256), np.float32), (10, 10), (64, 64), "vit_tiny_t", sam.encoder_id
        )
        with pytest.raises(ValueError, match="needs an HQ-SAM export"):
            sam.decode(embedding, boxes=np.array([[0, 0, 5, 5]]), hq_token_only=True)


def test_a_manifest_without_hq_loads_as_sam(exported, tmp_path):
    model, out, _ = exported
    if model.config.hq:
        pytest.skip("exports older than HQ-SAM support are SAM exports")
    for path in out.iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    manifest = json.loads((tmp_path / serving.MANIFEST_FILE).read_text())
    del manifest["hq"]
    (tmp_path / serving.MANIFEST_FILE).write_text(json.dumps(manifest))
    sam = serving.ExportedSam(tmp_path, load_encoder=False)
    g = model.config.image_embedding_size
    embedding = serving.Embedding(
        np.zeros((g, g, 256), np.float32), (10, 10), (64, 64), "vit_tiny_t", sam.encoder_id
    )
    masks, iou, _ = sam.decode(embedding, boxes=np.array([[0, 0, 5, 5]]))
    assert not sam.hq and masks.shape == (1, 3, 10, 10) and iou.shape == (1, 3)
