"""Access to the official `segment-anything-hq==0.3` (HQ-SAM and TinyViT) without timm/torchvision.

The package imports timm only for DropPath, register_model, trunc_normal_ and to_2tuple, and
torchvision for the same helpers as `segment_anything`: stand-ins for both are installed before it
is imported. `build_official_hq_sam` builds the official model for one of our `SamConfig`s (HQ-SAM,
or MobileSAM's TinyViT with `segment_anything`'s own decoder); `compare_with_official_hq` checks a
converted checkpoint against it (what `torch_to_flax.py --verify` runs for these variants).

torch is imported inside the functions: it is optional, and this module must import without it.
"""

from __future__ import annotations

import importlib
import sys
import types

import numpy as np

from ..builder import build_sam
from ..modeling.sam import SAM_VARIANTS, SamConfig
from ..predictor import SamPredictor
from .official import (
    OfficialSamUnavailable,
    import_official_modeling,
    install_torchvision_stand_in,
    official_vit_encoder,
)


def install_timm_stand_in() -> None:
    """Registers `timm.models.layers` (DropPath, to_2tuple, trunc_normal_) and
    `timm.models.registry.register_model` stand-ins. Does nothing when timm imports."""
    try:
        import timm  # noqa: F401

        return
    except Exception:  # noqa: BLE001 - absent or broken: use the stand-in
        pass
    import torch

    class DropPath(torch.nn.Module):
        """Stochastic depth: drops whole samples' residual branches while training."""

        def __init__(self, drop_prob: float | None = None):
            super().__init__()
            self.drop_prob = drop_prob or 0.0

        def forward(self, x):
            if not self.training or self.drop_prob == 0.0:
                return x
            keep = 1.0 - self.drop_prob
            mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
            return x * mask / keep

    def to_2tuple(x):
        return tuple(x) if isinstance(x, (tuple, list)) else (x, x)

    def trunc_normal_(tensor, mean=0.0, std=1.0, a=-2.0, b=2.0):
        return torch.nn.init.trunc_normal_(tensor, mean, std, a, b)

    def register_model(fn):
        return fn

    timm = types.ModuleType("timm")
    models = types.ModuleType("timm.models")
    layers = types.ModuleType("timm.models.layers")
    registry = types.ModuleType("timm.models.registry")
    layers.DropPath, layers.to_2tuple, layers.trunc_normal_ = DropPath, to_2tuple, trunc_normal_
    registry.register_model = register_model
    models.layers, models.registry, timm.models = layers, registry, models
    sys.modules.update(
        {
            "timm": timm,
            "timm.models": models,
            "timm.models.layers": layers,
            "timm.models.registry": registry,
        }
    )


def import_official_hq():
    """The official `segment_anything_hq` package (torch required)."""
    try:
        import torch  # noqa: F401
    except ImportError as e:
        raise OfficialSamUnavailable(
            "PyTorch is not installed: pip install 'stablesam-jax[dev]' (torch==2.13.0)"
        ) from e
    install_torchvision_stand_in()
    install_timm_stand_in()
    try:
        return importlib.import_module("segment_anything_hq")
    except ModuleNotFoundError as e:
        raise OfficialSamUnavailable(
            "the official HQ-SAM package is not installed: "
            "pip install --no-deps segment-anything-hq==0.3"
        ) from e


def _tiny_vit(modeling, config: SamConfig):
    return modeling.TinyViT(**_tiny_vit_kwargs(config))


def build_official_hq_sam(config: SamConfig):
    """The official torch model for an HQ or TinyViT `SamConfig`, as the package's builders lay
    it out: `segment_anything_hq`'s Sam for HQ-SAM; for plain TinyViT (MobileSAM) its TinyViT in
    `segment_anything`'s Sam with SAM's decoder, the encoder returning the embedding alone.

    Call `.eval()` again after setting the weights: TinyViT caches its attention biases then."""
    hq = import_official_hq()
    modeling = hq.modeling
    grid = config.img_size // config.patch_size
    d = config.prompt_embed_dim
    transformer_args = dict(
        depth=config.decoder_depth,
        embedding_dim=d,
        mlp_dim=config.decoder_mlp_dim,
        num_heads=config.decoder_heads,
    )
    decoder_args = dict(
        num_multimask_outputs=3,
        transformer_dim=d,
        iou_head_depth=3,
        iou_head_hidden_dim=config.iou_head_hidden_dim,
    )
    if config.hq:
        sam_module = modeling
        encoder = (
            _tiny_vit(modeling, config)
            if config.tiny_vit
            else official_vit_encoder(modeling, config)
        )
        decoder = modeling.MaskDecoderHQ(
            transformer=modeling.TwoWayTransformer(**transformer_args),
            vit_dim=config.early_dim,
            **decoder_args,
        )
    else:
        sam_module = import_official_modeling()

        class EmbeddingOnly(modeling.TinyViT):
            def forward(self, x):
                return super().forward(x)[0]  # SAM's Sam takes the embedding alone

        encoder = EmbeddingOnly(**_tiny_vit_kwargs(config))
        decoder = sam_module.MaskDecoder(
            transformer=sam_module.TwoWayTransformer(**transformer_args), **decoder_args
        )
    prompt_encoder = sam_module.PromptEncoder(
        embed_dim=d,
        image_embedding_size=(grid, grid),
        input_image_size=(config.img_size, config.img_size),
        mask_in_chans=config.mask_in_chans,
    )
    sam = sam_module.Sam(
        image_encoder=encoder,
        prompt_encoder=prompt_encoder,
        mask_decoder=decoder,
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return sam.eval()


def _tiny_vit_kwargs(config: SamConfig) -> dict:
    t = config.tiny_vit
    return dict(
        img_size=config.img_size,
        in_chans=3,
        num_classes=1000,
        embed_dims=list(t.embed_dims),
        depths=list(t.depths),
        num_heads=list(t.num_heads),
        window_sizes=list(t.window_sizes),
        mlp_ratio=t.mlp_ratio,
        drop_rate=0.0,
        drop_path_rate=0.0,
        use_checkpoint=False,
        mbconv_expand_ratio=t.mbconv_expand_ratio,
        local_conv_size=t.local_conv_size,
        layer_lr_decay=0.8,
    )


def official_predictor(torch_sam, config: SamConfig):
    """The official predictor class for the model: HQ's for HQ-SAM, SAM's otherwise."""
    if config.hq:
        return import_official_hq().SamPredictor(torch_sam)
    import_official_modeling()
    return importlib.import_module("segment_anything").SamPredictor(torch_sam)


def load_strict(torch_sam, state_dict: dict) -> None:
    """Loads numpy weights and fails unless every model key is filled (the official builders load
    with strict=False and only print mismatches), then re-runs `.eval()` for TinyViT's cache."""
    import torch

    keys = set(torch_sam.state_dict())
    tensors = {k: torch.from_numpy(np.asarray(v)) for k, v in state_dict.items() if k in keys}
    missing = sorted(keys - set(tensors))
    if missing:
        raise ValueError(f"the official model's weights {missing[:5]} are not in the checkpoint")
    torch_sam.load_state_dict(tensors, strict=True)
    torch_sam.eval()


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-12))


def compare_with_official_hq(model_type: str, state_dict, checkpoint: str, seed: int = 0) -> dict:
    """The official model holding `state_dict` vs our converted `checkpoint`, through both
    predictors on one generated non-square image with a box prompt (multimask, and for HQ-SAM
    also `hq_token_only`): the largest differences relative to the official values."""
    config = SAM_VARIANTS[model_type]
    torch_sam = build_official_hq_sam(config)
    load_strict(torch_sam, state_dict)
    rng = np.random.default_rng(seed)
    h, w = int(config.img_size * 0.75), config.img_size
    image = (rng.random((h, w, 3)) * 255).astype(np.uint8)
    box = np.array([w * 0.2, h * 0.25, w * 0.7, h * 0.8], np.float32)
    official = official_predictor(torch_sam, config)
    ours = SamPredictor(build_sam(model_type, checkpoint))
    official.set_image(image)
    ours.set_image(image)
    out = {
        "embedding_rel_max_diff": _rel(official.get_image_embedding(), ours.get_image_embedding())
    }
    for hq_only in (False, True) if config.hq else (False,):
        extra = {"hq_token_only": hq_only} if config.hq else {}
        _, ref_iou, ref_low = official.predict(box=box, multimask_output=True, **extra)
        _, iou, low = ours.predict(box=box, multimask_output=True, **extra)
        tag = "_hq_token_only" if hq_only else ""
        out[f"logits{tag}_rel_max_diff"] = _rel(ref_low, low)
        out[f"iou{tag}_rel_max_diff"] = _rel(ref_iou, iou)
    return out
