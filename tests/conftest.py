import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Preset specs are cached on disk; keep the tests' cache out of the user's home."""
    os.environ["SKETCHPLAN_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
