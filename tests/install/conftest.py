"""Tests of a minimal install (core only, or the jax extra only), run by .ci/run in their own virtualenvs with
SKETCHPLAN_INSTALL_CHECK set to ``core`` or ``jax``. The main test run skips collecting them (it has every
extra installed, where ``tests/test_architecture.py`` simulates missing frameworks instead)."""

import os

collect_ignore_glob = [] if os.environ.get("SKETCHPLAN_INSTALL_CHECK") else ["test_*.py"]
