"""Access to the official PyTorch `segment_anything` (PyPI) without torchvision.

The package's `__init__` imports torchvision only for image transforms and NMS; its `modeling`
subpackage needs torch alone. We register the package without running its `__init__` and import
`segment_anything.modeling` from it, or install a torchvision stand-in so the whole package works.
`compare_with_official` checks a converted checkpoint against the official model.

torch is imported inside the functions: it is optional (the `convert` and `dev` extras), and this
module must import without it.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from functools import partial

import numpy as np
from PIL import Image

from ..builder import build_sam
from ..modeling.sam import SAM_VARIANTS
from ..predictor import SamPredictor
from ..utils.transforms import ResizeLongestSide


def install_torchvision_stand_in() -> None:
    """Registers a stand-in for the few torchvision functions the official `segment_anything`
    package imports (a PIL resize for its predictor, batched NMS for its mask generator), so the
    official `SamPredictor` and `SamAutomaticMaskGenerator` run unchanged without torchvision, a
    5.5 GB install. Does nothing when a working torchvision is installed."""
    try:
        import torchvision  # noqa: F401

        return
    except Exception:  # noqa: BLE001 - absent or broken: use the stand-in
        pass
    import torch

    def to_pil_image(pic):
        return Image.fromarray(np.asarray(pic))

    def resize(img, size, interpolation=None, max_size=None, antialias=None):
        # torchvision on PIL images: size is (h, w); PIL takes (w, h); bilinear by default.
        return img.resize((size[1], size[0]), Image.BILINEAR)

    def box_area(boxes):
        return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])

    def box_iou(a, b):
        lt = torch.max(a[:, None, :2], b[None, :, :2])
        rb = torch.min(a[:, None, 2:], b[None, :, 2:])
        wh = (rb - lt).clamp(min=0)
        inter = wh[..., 0] * wh[..., 1]
        return inter / (box_area(a)[:, None] + box_area(b)[None, :] - inter)

    def nms(boxes, scores, iou_threshold):
        order = torch.argsort(scores, descending=True)
        keep = []
        suppressed = torch.zeros(len(boxes), dtype=torch.bool)
        ious = box_iou(boxes, boxes)
        for i in order.tolist():
            if suppressed[i]:
                continue
            keep.append(i)
            suppressed |= ious[i] > iou_threshold
        return torch.tensor(keep, dtype=torch.int64)

    def batched_nms(boxes, scores, idxs, iou_threshold):
        if boxes.numel() == 0:
            return torch.empty((0,), dtype=torch.int64)
        offsets = idxs.to(boxes) * (boxes.max() + 1)
        return nms(boxes + offsets[:, None], scores, iou_threshold)

    tv = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    functional.resize = resize
    functional.to_pil_image = to_pil_image
    transforms.functional = functional
    ops = types.ModuleType("torchvision.ops")
    boxes_mod = types.ModuleType("torchvision.ops.boxes")
    boxes_mod.batched_nms = batched_nms
    boxes_mod.box_area = box_area
    ops.boxes = boxes_mod
    ops.batched_nms = batched_nms
    tv.transforms = transforms
    tv.ops = ops
    sys.modules.update(
        {
            "torchvision": tv,
            "torchvision.transforms": transforms,
            "torchvision.transforms.functional": functional,
            "torchvision.ops": ops,
            "torchvision.ops.boxes": boxes_mod,
        }
    )


class OfficialSamUnavailable(ImportError):
    pass


def import_official_modeling():
    """Returns the official `segment_anything.modeling` module (torch required)."""
    try:
        import torch  # noqa: F401
    except ImportError as e:
        raise OfficialSamUnavailable(
            "PyTorch is not installed: pip install 'stablesam-jax[dev]' (torch==2.13.0)"
        ) from e
    # The official package imports torchvision for small helpers: without the stand-in, a bare
    # package registered below would make a later `from segment_anything import X` fail.
    install_torchvision_stand_in()
    if "segment_anything" not in sys.modules:
        try:  # the whole package when its torchvision import works (or a stand-in is installed)
            importlib.import_module("segment_anything")
        except ImportError:
            for name in [m for m in sys.modules if m.split(".")[0] == "segment_anything"]:
                del sys.modules[name]
    if "segment_anything" not in sys.modules:
        spec = importlib.util.find_spec("segment_anything")
        if spec is None:
            raise OfficialSamUnavailable(
                "the official segment-anything package is not installed: "
                "pip install segment-anything==1.0"
            )
        package = types.ModuleType("segment_anything")
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__ = spec
        sys.modules["segment_anything"] = package
    return importlib.import_module("segment_anything.modeling")


def official_vit_encoder(modeling, config):
    """The official `ImageEncoderViT` of `config`'s size, as the official `_build_sam` makes it
    (`modeling`: the official package's modeling module, SAM's or HQ-SAM's)."""
    import torch  # optional dependency: only the reference code needs it

    return modeling.ImageEncoderViT(
        depth=config.encoder_depth,
        embed_dim=config.encoder_embed_dim,
        img_size=config.img_size,
        mlp_ratio=4,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        num_heads=config.encoder_num_heads,
        patch_size=config.patch_size,
        qkv_bias=True,
        use_rel_pos=True,
        global_attn_indexes=list(config.encoder_global_attn_indexes),
        window_size=config.window_size,
        out_chans=config.prompt_embed_dim,
    )


def build_official_sam(config):
    """The official torch `Sam` for one of our `SamConfig`s (same layout as `_build_sam`)."""

    modeling = import_official_modeling()
    grid = config.img_size // config.patch_size
    sam = modeling.Sam(
        image_encoder=official_vit_encoder(modeling, config),
        prompt_encoder=modeling.PromptEncoder(
            embed_dim=config.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(config.img_size, config.img_size),
            mask_in_chans=config.mask_in_chans,
        ),
        mask_decoder=modeling.MaskDecoder(
            num_multimask_outputs=3,
            transformer=modeling.TwoWayTransformer(
                depth=config.decoder_depth,
                embedding_dim=config.prompt_embed_dim,
                mlp_dim=config.decoder_mlp_dim,
                num_heads=config.decoder_heads,
            ),
            transformer_dim=config.prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=config.iou_head_hidden_dim,
        ),
    )
    return sam.eval()


def randomize_(module, seed: int = 0, std: float = 0.05) -> None:
    """Fill EVERY parameter and buffer with random values in place.

    SAM's init leaves relative positions and the position embedding at zero and LayerNorms at
    1/0; parity on such weights would hide bugs in exactly those paths."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in list(module.state_dict().items()):
            if name.endswith(("pixel_mean", "pixel_std")):
                continue
            noise = torch.randn(tensor.shape, generator=g) * std
            if name.endswith(
                (
                    "norm1.weight",
                    "norm2.weight",
                    "norm3.weight",
                    "norm4.weight",
                    "norm_final_attn.weight",
                )
            ) or (tensor.ndim == 1 and "neck" in name and name.endswith("weight")):
                noise = noise + 1.0  # keep LayerNorm gains near 1 so deep stacks stay tame
            if name.endswith("positional_encoding_gaussian_matrix"):
                noise = torch.randn(tensor.shape, generator=g)
            tensor.copy_(noise)


def _rel_max_diff(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-12))


def compare_with_official(model_type: str, state_dict, checkpoint: str, seed: int = 0) -> dict:
    """The official torch SAM holding `state_dict` vs our converted `checkpoint` on one generated
    non-square image with a box prompt: the largest differences, relative to the official
    values, of the image embedding, the low-res logits and the IoU predictions."""
    import torch

    config = SAM_VARIANTS[model_type]
    torch_sam = build_official_sam(config)
    torch_sam.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()}, strict=False)
    jax_sam = build_sam(model_type, checkpoint=checkpoint)
    rng = np.random.default_rng(seed)
    h, w = int(config.img_size * 0.75), config.img_size
    image = (rng.random((h, w, 3)) * 255).astype(np.uint8)
    transform = ResizeLongestSide(config.img_size)
    box = np.array([w * 0.2, h * 0.25, w * 0.7, h * 0.8], np.float32)
    record = {
        "image": torch.as_tensor(transform.apply_image(image)).permute(2, 0, 1).float(),
        "original_size": (h, w),
        "boxes": torch.as_tensor(transform.apply_boxes(box, (h, w))).float()[None],
    }
    embeddings = []  # the official forward's image embedding, caught on its way to the decoder
    hook = torch_sam.image_encoder.register_forward_hook(lambda m, i, o: embeddings.append(o))
    with torch.no_grad():
        (official,) = torch_sam([record], multimask_output=True)
    hook.remove()
    predictor = SamPredictor(jax_sam)
    predictor.set_image(image)
    _, j_iou, j_logits = predictor.predict(box=box, multimask_output=True)
    return {
        "embedding_rel_max_diff": _rel_max_diff(
            embeddings[0].numpy(), predictor.get_image_embedding()
        ),
        "logits_rel_max_diff": _rel_max_diff(official["low_res_logits"][0].numpy(), j_logits),
        "iou_rel_max_diff": _rel_max_diff(official["iou_predictions"][0].numpy(), j_iou),
    }
