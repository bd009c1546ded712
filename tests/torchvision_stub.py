"""The tests' torchvision stand-in, installed on import: the official `segment_anything` imports
torchvision at package import, only for a PIL resize and batched NMS. The stand-in itself is the
library's (`stablesam_jax.tools.official.install_torchvision_stand_in`, also used by the benchmark);
this module only installs it. Import it (torch required) before importing the whole official
package: `import torchvision_stub  # noqa: F401`. `install()` is idempotent."""

from stablesam_jax.tools.official import install_torchvision_stand_in as install

install()

__all__ = ["install"]
