"""Segment Anything and the Stable-SAM plugins in JAX / Flax NNX."""

__version__ = "0.1.0"


def __getattr__(name):
    # Lazy: `import stablesam_jax.metrics` in a data worker must not pay for importing JAX models.
    if name in ("build_sam", "build_stable_sam", "sam_model_registry"):
        from . import builder as _build

        return getattr(_build, name)
    if name == "SamPredictor":
        from .predictor import SamPredictor

        return SamPredictor
    if name == "SamAutomaticMaskGenerator":
        from .automatic_mask_generator import SamAutomaticMaskGenerator

        return SamAutomaticMaskGenerator
    raise AttributeError(f"module 'stablesam_jax' has no attribute {name!r}")


__all__ = [
    "build_sam",
    "build_stable_sam",
    "sam_model_registry",
    "SamPredictor",
    "SamAutomaticMaskGenerator",
]
