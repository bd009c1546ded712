"""The tests' timm stand-in, installed on import: the official `segment_anything_hq` imports timm
only for DropPath, register_model, trunc_normal_ and to_2tuple. The stand-in is the library's
(`stablesam_jax.tools.official_hq.install_timm_stand_in`, also used by `--verify`); this module
installs it together with the torchvision one. Import it (torch required) before importing the
official HQ package: `import timm_stub  # noqa: F401`. `install()` is idempotent."""

import torchvision_stub

from stablesam_jax.tools.official_hq import install_timm_stand_in


def install() -> None:
    torchvision_stub.install()
    install_timm_stand_in()


install()

__all__ = ["install"]
