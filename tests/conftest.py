import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import torchvision_stub  # noqa: E402

# The official segment_anything imports torchvision at package import; give it the stand-in.
torchvision_stub.install()


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: full-size runs (vit_b at 1024 px)")


@pytest.fixture(scope="session")
def repo_root():
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
