import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # the optimizer tests share tests/plans.py
try:
    import torch
except ImportError:  # tests/install runs in virtualenvs without torch
    pass
else:
    torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Preset specs are cached on disk; keep the tests' cache out of the user's home."""
    os.environ["SKETCHPLAN_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
