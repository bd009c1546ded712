"""The `Sam` model (`segment_anything/modeling/sam.py`) and its variant table."""

from __future__ import annotations

import dataclasses
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..constants import PIXEL_MEAN, PIXEL_STD
from ..utils import torch_compat
from .encoders import make_image_encoder
from .forward import batched_forward, postprocess_logits
from .mask_decoder import MaskDecoder
from .mask_decoder_hq import MaskDecoderHQ, hq_options
from .plugins import PluginConfig
from .prompt_encoder import PromptEncoder
from .tiny_vit import TINY_VIT_5M, TINY_VIT_TEST, TinyViTConfig


@dataclasses.dataclass(frozen=True)
class SamConfig:
    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    img_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_heads: int = 8
    decoder_mlp_dim: int = 2048
    iou_head_hidden_dim: int = 256
    # HQ-SAM's decoder (an HQ token fed with early encoder features) instead of SAM's.
    hq: bool = False
    # TinyViT (MobileSAM's encoder) instead of the ViT; the encoder_* fields then describe its
    # last stage only (width, total depth, heads) and nothing reads them.
    tiny_vit: TinyViTConfig | None = None

    @property
    def image_embedding_size(self) -> int:
        return self.img_size // self.patch_size

    @property
    def early_dim(self) -> int:
        """Width of the early encoder features HQ-SAM takes (0 without HQ): the ViT's first
        global-attention block, TinyViT's stage-2 output."""
        if not self.hq:
            return 0
        return self.tiny_vit.early_dim if self.tiny_vit else self.encoder_embed_dim

    @property
    def embedding_channels(self) -> int:
        """Channels of the encoder's output: SAM's embedding, then HQ's early features."""
        return self.prompt_embed_dim + self.early_dim


def _tiny_vit_sam(tiny: TinyViTConfig, **kwargs) -> SamConfig:
    return SamConfig(
        tiny.embed_dims[-1], sum(tiny.depths), tiny.num_heads[-1], (), tiny_vit=tiny, **kwargs
    )


# Like `sam_model_registry`: the three released sizes and small ones for tests and the demo.
SAM_VARIANTS: dict[str, SamConfig] = {
    "vit_h": SamConfig(1280, 32, 16, (7, 15, 23, 31)),
    "vit_l": SamConfig(1024, 24, 16, (5, 11, 17, 23)),
    "vit_b": SamConfig(768, 12, 12, (2, 5, 8, 11)),
    # Test size: a 16x16 grid with 14x14 windows exercises window padding (16 -> 28).
    "vit_t": SamConfig(64, 2, 2, (1,), img_size=256),
    # Demo size: small encoder, the real decoder.
    "vit_demo": SamConfig(128, 4, 4, (1, 3), img_size=256, window_size=8),
    # HQ-SAM (`segment-anything-hq`): SAM's encoders with the HQ decoder.
    "hq_vit_h": SamConfig(1280, 32, 16, (7, 15, 23, 31), hq=True),
    "hq_vit_l": SamConfig(1024, 24, 16, (5, 11, 17, 23), hq=True),
    "hq_vit_b": SamConfig(768, 12, 12, (2, 5, 8, 11), hq=True),
    # HQ-SAM on the demo SAM (the demo's low-shot comparison).
    "hq_vit_demo": SamConfig(128, 4, 4, (1, 3), img_size=256, window_size=8, hq=True),
    # TinyViT encoders, named as the HQ package does: MobileSAM's `vit_t` checkpoints are
    # `vit_tiny` here (our `vit_t` is the small test ViT above).
    "vit_tiny": _tiny_vit_sam(TINY_VIT_5M),
    "hq_vit_tiny": _tiny_vit_sam(TINY_VIT_5M, hq=True),
    # Test sizes. hq_vit_t: two global blocks, so "the first global block" is tested.
    "hq_vit_t": SamConfig(64, 3, 2, (1, 2), img_size=256, hq=True),
    "vit_tiny_t": _tiny_vit_sam(TINY_VIT_TEST, decoder_mlp_dim=256),
    "hq_vit_tiny_t": _tiny_vit_sam(TINY_VIT_TEST, decoder_mlp_dim=256, hq=True),
}


def decode_prompts(
    prompt_encoder: PromptEncoder,
    mask_decoder: MaskDecoder,
    image_embeddings: jax.Array,
    point_coords: jax.Array | None = None,
    point_labels: jax.Array | None = None,
    boxes: jax.Array | None = None,
    mask_input: jax.Array | None = None,
    *,
    multimask_output: bool | None,
    return_intermediates: bool = False,
    hq_token_only: bool = False,
) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """The official prompt -> mask path: prompt encoder, then mask decoder.

    image_embeddings [1 or B, H, W, C]; point_coords [B, N, 2] and point_labels [B, N], boxes
    [B, 4], mask_input [B, 256, 256] logits, all in the model's input frame; each optional.
    Returns (low_res_logits [B, M, 256, 256], iou [B, M], intermediates), M as in
    `MaskDecoder.__call__` (`MaskDecoderHQ.__call__` for HQ-SAM, which takes `hq_token_only`).
    """
    # point_labels comes with point_coords (the callers check).
    points = None if point_coords is None else (point_coords, cast(jax.Array, point_labels))
    sparse, dense = prompt_encoder(points, boxes, mask_input)
    return mask_decoder(
        image_embeddings,
        prompt_encoder.get_dense_pe(),
        sparse,
        dense,
        multimask_output,
        return_intermediates=return_intermediates,
        **hq_options(mask_decoder, hq_token_only),
    )


def decode_padded_prompts(
    prompt_encoder: PromptEncoder,
    mask_decoder: MaskDecoder,
    image_embeddings: jax.Array,
    point_coords: jax.Array,
    point_labels: jax.Array,
    boxes: jax.Array,
    box_valid: jax.Array,
    mask_input: jax.Array | None = None,
    mask_valid: jax.Array | None = None,
    *,
    multimask_output: bool | None,
    return_intermediates: bool = False,
    hq_token_only: bool = False,
) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """Fixed-shape prompt batches, so one compilation serves any mix of prompt types.

    point_coords [B, N, 2], point_labels [B, N] (`PAD_LABEL` marks an empty slot), boxes
    [B, 4] with box_valid [B], mask_input [B, 256, 256] with mask_valid [B]. Padded tokens
    are masked out of attention, so each row equals the official unpadded call on its own
    prompts. Returns what `decode_prompts` returns.
    """
    sparse, token_valid, dense = prompt_encoder.encode_padded(
        point_coords, point_labels, boxes, box_valid, mask_input, mask_valid
    )
    return mask_decoder(
        image_embeddings,
        prompt_encoder.get_dense_pe(),
        sparse,
        dense,
        multimask_output,
        token_valid=token_valid,
        return_intermediates=return_intermediates,
        **hq_options(mask_decoder, hq_token_only),
    )


class Sam(nnx.Module):
    mask_threshold: float = 0.0
    image_format: str = "RGB"

    def __init__(
        self,
        config: SamConfig,
        *,
        rngs: nnx.Rngs,
        dtype=None,
        attention_impl: str = "reference",
        plugin_config: PluginConfig | None = None,
        model_type: str = "custom",
        scan_blocks: bool = False,
    ):
        self.config = config
        self.model_type = model_type
        self.plugin_config = plugin_config
        self.image_encoder = make_image_encoder(config, rngs, dtype, attention_impl, scan_blocks)
        grid = config.image_embedding_size
        self.prompt_encoder = PromptEncoder(
            rngs=rngs,
            embed_dim=config.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(config.img_size, config.img_size),
            mask_in_chans=config.mask_in_chans,
        )
        decoder = dict(
            rngs=rngs,
            transformer_dim=config.prompt_embed_dim,
            transformer_depth=config.decoder_depth,
            transformer_heads=config.decoder_heads,
            transformer_mlp_dim=config.decoder_mlp_dim,
            iou_head_hidden_dim=config.iou_head_hidden_dim,
            dtype=dtype,
            plugins=plugin_config,
        )
        self.mask_decoder = (
            MaskDecoderHQ(vit_dim=config.early_dim, **decoder)
            if config.hq
            else MaskDecoder(**decoder)
        )

    @property
    def img_size(self) -> int:
        return self.config.img_size

    def preprocess(self, x: jax.Array) -> jax.Array:
        """[B, h, w, 3] pixels (long side = img_size) -> normalized, zero-padded [B, S, S, 3]."""
        x = (x.astype(jnp.float32) - jnp.asarray(PIXEL_MEAN)) / jnp.asarray(PIXEL_STD)
        h, w = x.shape[1:3]
        s = self.config.img_size
        return jnp.pad(x, ((0, 0), (0, s - h), (0, s - w), (0, 0)))

    def postprocess_masks(
        self,
        masks: jax.Array,
        input_size: tuple[int, int],
        original_size: tuple[int, int],
    ) -> jax.Array:
        """[..., 256, 256] low-res logits -> [..., H, W] logits at the original image size."""
        return postprocess_logits(masks, self.config.img_size, input_size, original_size)

    def decode(
        self,
        image_embeddings: jax.Array,
        point_coords: jax.Array | None = None,
        point_labels: jax.Array | None = None,
        boxes: jax.Array | None = None,
        mask_input: jax.Array | None = None,
        *,
        multimask_output: bool | None,
        return_intermediates: bool = False,
        hq_token_only: bool = False,
    ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
        """`decode_prompts` with this model's prompt encoder and mask decoder."""
        return decode_prompts(
            self.prompt_encoder,
            self.mask_decoder,
            image_embeddings,
            point_coords,
            point_labels,
            boxes,
            mask_input,
            multimask_output=multimask_output,
            return_intermediates=return_intermediates,
            hq_token_only=hq_token_only,
        )

    def decode_padded(
        self,
        image_embeddings: jax.Array,
        point_coords: jax.Array,
        point_labels: jax.Array,
        boxes: jax.Array,
        box_valid: jax.Array,
        mask_input: jax.Array | None = None,
        mask_valid: jax.Array | None = None,
        *,
        multimask_output: bool | None,
        return_intermediates: bool = False,
        hq_token_only: bool = False,
    ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
        """`decode_padded_prompts` with this model's prompt encoder and mask decoder."""
        return decode_padded_prompts(
            self.prompt_encoder,
            self.mask_decoder,
            image_embeddings,
            point_coords,
            point_labels,
            boxes,
            box_valid,
            mask_input,
            mask_valid,
            multimask_output=multimask_output,
            return_intermediates=return_intermediates,
            hq_token_only=hq_token_only,
        )

    def __call__(
        self, batched_input: list[dict[str, Any]], multimask_output: bool
    ) -> list[dict[str, Any]]:
        """The official batched forward, compiled: a list of records with "image" (3xHxW as in
        the official docstring, or HxWx3; torch, numpy or JAX; long side already resized to
        img_size), "original_size" (H, W) and optional "point_coords" [B, N, 2], "point_labels"
        [B, N], "boxes" [B, 4], "mask_inputs" [B, 1, 256, 256] in the input frame. Returns per
        record "masks" [B, C, H, W] (bool), "iou_predictions" [B, C] and "low_res_logits" [B, C,
        256, 256]: torch tensors for a record given as torch tensors, else JAX arrays. Prompts
        go through `decode` (see `modeling.forward`)."""
        return batched_forward(self, batched_input, multimask_output)

    # ------------------------------------------------------------ torch-shaped module surface

    @property
    def device(self) -> Any:
        """Where the weights live: a `torch.device` when the program has imported torch (so
        `torch.tensor(..., device=sam.device)` works as in a PyTorch script), else the
        `jax.Device`."""
        return torch_compat.user_device(torch_compat.device_of(nnx.state(self)))

    def to(self, device: Any = None, dtype: Any = None, non_blocking: bool = False) -> Sam:
        """Places the weights on a device, like `torch.nn.Module.to`; returns the model.

        device: "cpu", "cuda", "cuda:N", "tpu", a `torch.device` or a `jax.Device`. "cuda"
        where JAX has no GPU falls back to JAX's default device with one warning. Build with
        `build_sam(..., dtype=...)` to change the compute dtype: `dtype` here must be float32 or
        None. `non_blocking` is accepted and ignored (JAX transfers are asynchronous anyway)."""
        if device is not None and "dtype" in type(device).__name__.lower():
            device, dtype = None, device  # `sam.to(torch.float32)`
        if dtype is not None and "float32" not in str(dtype):
            raise TypeError(
                f"Sam.to(dtype={dtype}) is not supported: weights stay float32; build the model "
                "with build_sam(model_type, checkpoint, dtype=jnp.bfloat16) for a lower compute "
                "dtype"
            )
        if device is not None:
            target = torch_compat.jax_device(device)
            nnx.update(self, jax.device_put(nnx.state(self), target))
        return self

    def cuda(self, device: int | None = None) -> Sam:
        return self.to("cuda" if device is None else f"cuda:{device}")

    def cpu(self) -> Sam:
        return self.to("cpu")

    def eval(self, **attributes) -> Sam:
        """Evaluation mode (SAM has no dropout or batch norm); returns the model, as torch does,
        so `sam = build_sam(...).eval()` works."""
        super().eval(**attributes)
        return self


def count_params(model: nnx.Module, filter_=nnx.Param) -> int:
    state = nnx.state(model, filter_)
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(state)))
