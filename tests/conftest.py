import importlib.util
import os
import sys

import pytest

# One persistent XLA cache for the whole run, inherited by the subprocesses tests start: building a
# model eagerly compiles each weight's init once, which otherwise costs every process ~15-25 s.
_CACHE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".pytest_cache", "jax")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.abspath(_CACHE))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")

# Test helpers (sam_pairs, train_helpers, torchvision_stub) import as top-level modules.
sys.path.insert(0, os.path.dirname(__file__))

# Markers (declared in pyproject.toml, `--strict-markers`):
#   torch_reference  needs torch and the official segment-anything; a module that imports them
#                    also calls `pytest.importorskip("torch")` at its top, so it collects (as
#                    skipped) without torch, e.g. on CI's Python 3.12 lane.
#   multidevice      several fake CPU devices or several JAX processes (in subprocesses).
#   slow             full-size runs (vit_b at 1024 px).
# The torchvision stand-in for the official package is installed only by the tests that import
# the whole official package (`torchvision_stub.install()`), never here.

_HAS_TORCH = importlib.util.find_spec("torch") is not None


def pytest_collection_modifyitems(config, items):
    """A test marked `torch_reference` one by one (in a module that imports no torch) skips
    cleanly when torch is absent, instead of failing inside the library."""
    if _HAS_TORCH:
        return
    skip = pytest.mark.skip(reason="needs torch (the PyTorch reference): pip install -e '.[dev]'")
    for item in items:
        if "torch_reference" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def repo_root():
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
