"""Official PyTorch SAM and our port with the same (fully randomized) weights.

Needs torch: a test module importing this helper is marked `torch_reference` and calls
`pytest.importorskip("torch")` first. Importing it installs the torchvision stand-in, so the whole
official package (`segment_anything.SamPredictor`) imports too."""

from __future__ import annotations

import numpy as np
import torch
import torchvision_stub  # noqa: F401 - installs the torchvision stand-in
from flax import nnx

from stablesam_jax import checkpoint as ckpt
from stablesam_jax.convert import convert_state_dict
from stablesam_jax.modeling import Sam, SamConfig
from stablesam_jax.tools.official import build_official_sam, randomize_


def make_pair(config: SamConfig, seed: int = 0, plugin_config=None):
    torch_sam = build_official_sam(config)
    randomize_(torch_sam, seed)
    state_dict = {k: v.numpy() for k, v in torch_sam.state_dict().items()}
    # A different init seed than the torch weights: every value must come from the conversion.
    ours = Sam(config, rngs=nnx.Rngs(seed + 123), plugin_config=plugin_config)
    flat = convert_state_dict(state_dict, ours)
    ckpt.load_flat_weights(ours, flat, ckpt.is_sam_weight, "randomized official SAM")
    return torch_sam, ours


def rel_err(reference, ours) -> float:
    """max |a - b| / max |a|: the parity measure (fp32 tolerance 1e-4)."""
    a = np.asarray(
        reference.detach().numpy() if torch.is_tensor(reference) else reference, np.float64
    )
    b = np.asarray(ours, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-12))


def nchw(x) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


def nhwc(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().transpose(0, 2, 3, 1)
