"""Official HQ-SAM / TinyViT (`segment-anything-hq==0.3`) and our port with the same, fully
randomized weights (BatchNorm running statistics included).

Needs torch: a test module importing this helper is marked `torch_reference` and calls
`pytest.importorskip("torch")` first. Importing it installs the timm and torchvision stand-ins."""

from __future__ import annotations

import timm_stub  # noqa: F401 - installs the timm and torchvision stand-ins
import torch
from flax import nnx

from stablesam_jax import checkpoint as ckpt
from stablesam_jax.convert import convert_state_dict
from stablesam_jax.modeling import Sam, SamConfig
from stablesam_jax.tools.official_hq import build_official_hq_sam, load_strict

# Gains kept near 1 (LayerNorm, BatchNorm weights), so stacked layers stay tame.
_GAINS = (
    "norm1.weight",
    "norm2.weight",
    "norm3.weight",
    "norm4.weight",
    "norm_final_attn.weight",
    "norm.weight",
    "bn.weight",
)


def randomize_all_(module, seed: int = 0, std: float = 0.05) -> None:
    """Every float parameter and buffer random (BatchNorm running means and positive running
    variances included); integer counters left as they are."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if not tensor.is_floating_point() or name.endswith(("pixel_mean", "pixel_std")):
                continue
            noise = torch.randn(tensor.shape, generator=g) * std
            if name.endswith("running_var"):
                noise = 0.5 + torch.rand(tensor.shape, generator=g)
            elif name.endswith("running_mean"):
                noise = noise * 4
            elif name.endswith(_GAINS) or (tensor.ndim == 1 and name.endswith("weight")):
                noise = noise + 1.0  # 1-d weights are LayerNorm2d / BatchNorm gains
            elif name.endswith("positional_encoding_gaussian_matrix"):
                noise = torch.randn(tensor.shape, generator=g)
            tensor.copy_(noise)


def make_hq_pair(config: SamConfig, seed: int = 0, plugin_config=None):
    torch_sam = build_official_hq_sam(config)
    randomize_all_(torch_sam, seed)
    state_dict = {k: v.numpy() for k, v in torch_sam.state_dict().items()}
    load_strict(torch_sam, state_dict)  # `.eval()` again: TinyViT caches its biases there
    # A different init seed than the torch weights: every value must come from the conversion.
    ours = Sam(config, rngs=nnx.Rngs(seed + 123), plugin_config=plugin_config)
    flat = convert_state_dict(state_dict, ours)
    ckpt.load_flat_weights(ours, flat, ckpt.is_sam_weight, "randomized official HQ-SAM")
    return torch_sam, ours, state_dict
