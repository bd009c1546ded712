"""The command tests' shared inputs (`cli_helpers.make_world`), made once per session."""

import pytest
from cli_helpers import World, make_world


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> World:
    return make_world(tmp_path_factory.mktemp("world"))
