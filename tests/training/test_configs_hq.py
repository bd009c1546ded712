"""The HQ-SAM training configs and the HQ-SAM evaluation rows load, validate and build their
model abstractly (shapes only, no weights)."""

import importlib.util
import os

import jax
import numpy as np
import pytest
from flax import nnx
from train_helpers import REPO

from stablesam_jax import training
from stablesam_jax.evaluation.specs import specs_from_config
from stablesam_jax.modeling.mask_decoder_hq import MaskDecoderHQ
from stablesam_jax.training.trainable import TRAINABLE_SUBSETS
from stablesam_jax.training.trainer import build_model


def _load(*parts):
    path = os.path.join(REPO, *parts)
    spec = importlib.util.spec_from_file_location(parts[-1][:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _count(model, subset) -> int:
    state = nnx.state(model, TRAINABLE_SUBSETS[subset])
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state))


@pytest.mark.parametrize(
    "name, subset, epochs, plugins",
    [("hq_sam_vit_l", "hq", 12.0, False), ("stable_sam_hq_vit_l", "plugins", 1.0, True)],
)
def test_hq_training_configs_build_their_model(name, subset, epochs, plugins):
    module = _load("train", "configs", f"{name}.py")
    assert "python -m stablesam_jax.train" in module.__doc__ and "Expected result" in module.__doc__
    config = module.get_config()
    config.data.root = "/data/hqseg44k"
    training.validate_config(config)
    assert config.model_type == "hq_vit_l" and config.trainable == subset
    assert config.with_plugins == plugins and config.num_epochs == epochs
    assert config.batch_size == 32 and config.optimizer.learning_rate == 1e-3
    if name == "hq_sam_vit_l":
        assert tuple(config.optimizer.lr_drop_epochs) == (10,)
        assert config.optimizer.lr_drop_factor == 0.1
    model = nnx.eval_shape(lambda: build_model(config))
    assert isinstance(model.mask_decoder, MaskDecoderHQ)
    assert (model.plugin_config is not None) == plugins
    # What is trained: the HQ parts (millions of weights) or the plugins (tens of thousands).
    trained = _count(model, subset)
    assert (1_000_000 < trained < 10_000_000) if subset == "hq" else (0 < trained < 200_000)


@pytest.mark.parametrize("name", ["hq_paper", "coco_noisy_box"])
def test_eval_configs_have_an_hq_sam_row(name):
    config = _load("eval", "configs", f"{name}.py").get_config()
    row = config.models.hq_sam
    assert row.model_type == "hq_vit_l" and row.kind == "sam" and not row.enabled
    assert {"sam", "stable_sam"} <= set(config.models.keys())


def test_demo_sam_clusters_eval_config_scores_the_clusters_selection_scenes():
    config = _load("eval", "configs", "demo_sam_clusters.py").get_config()
    models, datasets, coco = specs_from_config(config)
    assert [m.model_type for m in models] == ["vit_demo"] and not coco
    (spec,) = datasets
    assert (spec.family, spec.seed, spec.num, spec.max_objects) == ("clusters", 4, 40, 8)
    assert spec.open()[0][2] == "clusters_4_000000"
