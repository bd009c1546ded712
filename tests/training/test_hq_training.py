"""HQ-SAM training as HQ-SAM does it: started from plain SAM weights with its own modules random,
the loss on the HQ mask alone, and scored on the HQ mask alone in evaluation."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from stablesam_jax import builder, evaluation, training
from stablesam_jax import checkpoint as ckpt
from stablesam_jax.constants import PAD_LABEL
from stablesam_jax.evaluation.interface import PromptBatch, Sample
from stablesam_jax.evaluation.predictors import SamEvalPredictor
from stablesam_jax.modeling.mask_decoder_hq import HQ_MODULES, is_hq_path
from stablesam_jax.predictor import SamPredictor
from stablesam_jax.training import losses, step
from stablesam_jax.training.trainable import subset_filter
from stablesam_jax.training.trainer import build_model


def _by_name(model, which):
    return {k: np.asarray(v) for k, v in ckpt.flat_weights(model, which).items()}


@pytest.fixture(scope="module")
def sam_dir(tmp_path_factory):
    sam = builder.build_sam("vit_demo", seed=3)
    return sam, builder.save_sam(sam, str(tmp_path_factory.mktemp("sam") / "sam"))


def test_sam_base_type_maps_hq_variants_to_their_sam():
    assert builder.sam_base_type("hq_vit_l") == "vit_l"
    assert builder.sam_base_type("hq_vit_demo") == "vit_demo"
    assert builder.sam_base_type("hq_vit_tiny") == "vit_tiny"
    for not_hq in ("vit_l", "hq_vit_t"):  # hq_vit_t has no SAM twin (three blocks vs vit_t's two)
        with pytest.raises(ValueError, match="not an HQ-SAM variant"):
            builder.sam_base_type(not_hq)


def test_load_sam_into_hq_takes_every_sam_weight_and_keeps_the_hq_init(sam_dir):
    sam, directory = sam_dir
    hq = builder.build_sam("hq_vit_demo", seed=11)
    fresh_hq = _by_name(builder.build_sam("hq_vit_demo", seed=11), ckpt.is_sam_weight)
    builder.load_sam_into_hq(hq, directory)
    loaded = _by_name(hq, ckpt.is_sam_weight)
    sam_weights = _by_name(sam, ckpt.is_sam_weight)
    hq_only = sorted(set(loaded) - set(sam_weights))
    assert {name.split(".")[1] for name in hq_only} == set(HQ_MODULES)
    for name, value in sam_weights.items():
        np.testing.assert_array_equal(loaded[name], value, err_msg=name)
    for name in hq_only:
        np.testing.assert_array_equal(loaded[name], fresh_hq[name], err_msg=name)
    # The SAM weights really changed: seed 11's encoder differs from seed 3's.
    assert not np.array_equal(
        fresh_hq["image_encoder.patch_embed.proj.kernel"],
        loaded["image_encoder.patch_embed.proj.kernel"],
    )


def test_load_sam_into_hq_refuses_another_sam_size(tmp_path):
    other = builder.save_sam(builder.build_sam("vit_t"), str(tmp_path / "vit_t"))
    hq = builder.build_sam("hq_vit_demo")
    with pytest.raises(ckpt.CheckpointError, match="vit_t"):
        builder.load_sam_into_hq(hq, other)


def test_trainer_builds_hq_sam_from_sam_weights(sam_dir):
    sam, directory = sam_dir
    config = training.default_config()
    config.model_type = "hq_vit_demo"
    config.with_plugins = False
    config.trainable = "hq"
    config.sam_checkpoint = directory
    config.hq_from_sam = True
    model = build_model(config)
    np.testing.assert_array_equal(
        np.asarray(model.mask_decoder.iou_token.weight[...]),
        np.asarray(sam.mask_decoder.iou_token.weight[...]),
    )


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"hq_from_sam": True, "sam_checkpoint": None}, "needs config.sam_checkpoint"),
        ({"model_type": "vit_demo", "hq_token_only": True}, "needs an HQ-SAM model_type"),
        ({"model_type": "vit_demo", "hq_from_sam": True}, "needs an HQ-SAM model_type"),
    ],
)
def test_hq_config_fields_are_checked(overrides, message):
    config = training.default_config()
    config.model_type = "hq_vit_demo"
    config.with_plugins = False
    config.trainable = "hq"
    config.data.source = "scenes"
    for key, value in overrides.items():
        config[key] = value
    with pytest.raises(training.ConfigError, match=message):
        training.validate_config(config)


def _batch(rng, n=2, size=256):
    box = np.array([[40.0, 50.0, 180.0, 200.0], [10.0, 20.0, 120.0, 90.0]], np.float32)[:n]
    mask = np.zeros((n, size, size), np.float32)
    mask[0, 50:200, 40:180] = 1
    mask[1, 20:90, 10:120] = 1
    return {
        "image": rng.integers(0, 255, (n, size, size, 3)).astype(np.float32),
        "point_coords": np.zeros((n, 1, 2), np.float32),
        "point_labels": np.full((n, 1), PAD_LABEL, np.int32),
        "box": box,
        "box_valid": np.ones(n, bool),
        "mask_input": np.zeros((n, size // 4, size // 4), np.float32),
        "mask_valid": np.zeros(n, bool),
        "mask": mask,
    }


def test_hq_token_only_loss_is_the_loss_of_the_hq_mask_alone():
    model = builder.build_sam("hq_vit_demo", seed=2)
    batch = _batch(np.random.default_rng(0))
    definition, params, frozen = step.split_model(model, subset_filter("hq"))
    settings = step.LossSettings(sampling="dense")
    key = jax.random.key(0)
    embeddings = step.encode(model, batch["image"])
    args = (params, frozen, batch, embeddings, key)
    loss_hq, _ = step.loss_fn(*args, model=definition, settings=settings, hq_token_only=True)
    loss_both, _ = step.loss_fn(*args, model=definition, settings=settings)
    # The HQ mask on its own: all five masks from the decoder, the last one is the HQ token's.
    low_res, _, _ = model.decode_padded(
        embeddings,
        *(batch[k] for k in ("point_coords", "point_labels", "box", "box_valid")),
        batch["mask_input"],
        batch["mask_valid"],
        multimask_output=None,
    )
    hq_logits = low_res[:, -1]
    target = losses.downsample_mask(batch["mask"], hq_logits.shape[-1])
    expected, _ = losses.mask_loss(hq_logits, target, key, sampling="dense")
    np.testing.assert_allclose(float(loss_hq), float(expected), rtol=1e-5)
    combined = low_res[:, 0] + hq_logits
    expected_both, _ = losses.mask_loss(combined, target, key, sampling="dense")
    np.testing.assert_allclose(float(loss_both), float(expected_both), rtol=1e-5)
    assert abs(float(loss_hq) - float(loss_both)) > 1e-3


def test_eval_predictor_scores_the_hq_mask_alone_when_asked():
    model = builder.build_sam("hq_vit_demo", seed=4)
    image = np.random.default_rng(1).integers(0, 255, (200, 240, 3)).astype(np.uint8)
    boxes = np.array([[20.0, 30.0, 150.0, 170.0], [60.0, 10.0, 230.0, 120.0]], np.float32)
    prompts = PromptBatch(
        np.zeros((2, 1, 2), np.float32),
        np.full((2, 1), PAD_LABEL, np.int32),
        boxes,
        np.ones(2, bool),
    )
    sample = Sample(image=image, mask=np.zeros((200, 240), bool), name="x")
    official = SamPredictor(model)
    official.set_image(image)
    for hq_token_only in (False, True):
        predictor = SamEvalPredictor(model, hq_token_only=hq_token_only)
        got = predictor.predict(sample, predictor.embed([image])[0], prompts).masks
        for i, box in enumerate(boxes):
            masks, _, _ = official.predict(
                box=box, multimask_output=False, hq_token_only=hq_token_only
            )
            assert np.mean(got[i] != masks[0]) < 1e-3, (hq_token_only, i)
    with pytest.raises(ValueError, match="needs an HQ-SAM model"):
        SamEvalPredictor(builder.build_sam("vit_t"), hq_token_only=True)


def test_hq_paths_are_the_hq_modules():
    model = nnx.eval_shape(lambda: builder.build_sam("hq_vit_demo"))
    paths = [p for p, v in nnx.iter_graph(model) if isinstance(v, nnx.Variable)]
    hq_paths = [p for p in paths if is_hq_path(p)]
    assert {p[1] for p in hq_paths} == set(HQ_MODULES)
    # Nothing outside the decoder, and SAM's own decoder parts are not HQ.
    assert all(p[0] == "mask_decoder" for p in hq_paths)
    assert not any(is_hq_path(p) for p in paths if p[:2] == ("mask_decoder", "iou_token"))


def test_eval_rows_take_hq_token_only_for_hq_models_only():
    config = evaluation.base_config("/tmp/unused_eval_out")
    config.models.hq = evaluation.model_config("hq_vit_demo", random_init=True, hq_token_only=True)
    config.models.sam = evaluation.model_config("vit_demo", random_init=True, hq_token_only=True)
    specs = {s.name: s for s in evaluation.specs_from_config(config)[0]}
    assert specs["hq"].hq_token_only
    specs["hq"].validate()
    with pytest.raises(ValueError, match="hq_token_only=True needs an HQ-SAM model_type"):
        specs["sam"].validate()
