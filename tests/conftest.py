import os
import sys

import pytest

# One persistent XLA cache for the whole run, inherited by the subprocesses tests start: building a
# model eagerly compiles each weight's init once, which otherwise costs every process ~15-25 s.
_CACHE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".pytest_cache", "jax")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.abspath(_CACHE))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")

sys.path.insert(0, os.path.dirname(__file__))

import torchvision_stub  # noqa: E402

# The official segment_anything imports torchvision at package import; give it the stand-in.
torchvision_stub.install()


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: full-size runs (vit_b at 1024 px)")


@pytest.fixture(scope="session")
def repo_root():
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
