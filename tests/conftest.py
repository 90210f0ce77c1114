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


def pytest_sessionstart(session):
    """Every session starts with the method facts' memos empty: benchmarks/mutation.py (mutmut) forks each
    mutant's session from a process that ran the original code, whose remembered replays would otherwise answer
    for the mutant (every mutant of the Sketchy FD replay once survived that way)."""
    try:
        from sketchplan.methods import clear_caches
    except ImportError:  # tests/install: a virtualenv that may lack the package's dependencies
        return
    clear_caches()


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Preset specs are cached on disk; keep the tests' cache out of the user's home."""
    os.environ["SKETCHPLAN_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield


def pytest_terminal_summary(terminalreporter):
    """One line saying how many README/docs code blocks ran (tests/test_docs.py), for .ci/run's log."""
    stats = terminalreporter.stats
    count = {k: sum(1 for r in stats.get(k, []) if getattr(r, "when", "call") in ("call", "setup")
                    and "test_docs.py::test_block[" in r.nodeid) for k in ("passed", "failed", "skipped")}
    if any(count.values()):
        terminalreporter.write_line(f"docs as tests: {count['passed'] + count['failed']} code blocks of README.md "
                                    f"and docs/*.md executed ({count['passed']} passed, {count['failed']} failed), "
                                    f"{count['skipped']} skipped (reasons above)")
