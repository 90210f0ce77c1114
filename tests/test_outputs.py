"""Issue 17: writing outputs never damages a file (``sketchplan.outputs``).

- SIGKILL at random points of a large plan write (every system call of the write path, chosen at random, in a
  child process): the target is always the old or the new complete file, and the next write removes the
  temporary the killed writer left;
- SIGTERM and Ctrl-C during a write: the temporary is removed at once and the process still ends by the signal;
- permissions are kept, symlinks are written through, the file and its directory are fsynced, a failed write
  changes nothing.
"""

from __future__ import annotations

import os
import random
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from sketchplan.errors import UserError
from sketchplan.outputs import TEMP_MARK, check_output, prepare, remove_stale_temporaries, write_atomic

SRC = str(Path(__file__).resolve().parents[1] / "src")

# The child imports only sketchplan.outputs (no torch: it starts in a fraction of a second), lists the calls into
# the os module one write_atomic makes (sys.setprofile sees each) and, at call number K, sends itself SIGNAL.
# K = 0 only lists them.
CHILD = r"""
import os, signal, sys
sys.path.insert(0, sys.argv[1])
from sketchplan.outputs import write_atomic
target, source, k, sig = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
data = open(source, "rb").read()
names = []
def prof(frame, event, arg):
    if event == "c_call" and getattr(arg, "__module__", None) == "posix":
        names.append(arg.__name__)
        if len(names) == k:
            sys.setprofile(None)
            os.kill(os.getpid(), sig)
sys.setprofile(prof)
write_atomic(target, data)
sys.setprofile(None)
print(" ".join(names))
"""


def _child(tmp: Path, target: Path, source: Path, k: int, sig: int) -> subprocess.CompletedProcess:
    script = tmp / "child.py"
    if not script.exists():
        script.write_text(CHILD)
    return subprocess.run([sys.executable, str(script), SRC, str(target), str(source), str(k), str(sig)],
                          capture_output=True, text=True, timeout=120)


def _temps(d: Path) -> list[str]:
    return [n for n in os.listdir(d) if TEMP_MARK in n or n.endswith(".tmp")]


@pytest.fixture(scope="module")
def big_plans(tmp_path_factory):
    """Two versions of a large plan (about 8 MB of YAML each: a real plan whose tensor list is repeated to
    40,000 entries)."""
    import yaml

    from sketchplan.planner import make_plan
    from sketchplan.planner.analysis import ModelSpec, ParamSpec

    d = tmp_path_factory.mktemp("plans")
    spec = ModelSpec([ParamSpec(f"layers.{i}.w", (256, 64 + i % 7)) for i in range(40)], source="big")
    base = yaml.safe_load(make_plan(spec, None, methods=["adam", "shampoo"]).to_yaml())
    entries = yaml.safe_dump(base.pop("tensors"), sort_keys=False, width=120)  # "- name: layers.0.w ..."
    paths = []
    for version in ("A", "B"):
        head = yaml.safe_dump(dict(base, model=dict(base["model"], source=f"big-{version}")), sort_keys=False)
        body = "".join(entries.replace("- name: layers.", f"- name: {version}{i}.layers.") for i in range(1000))
        p = d / f"{version}.yaml"
        p.write_text(head + "tensors:\n" + body)
        paths.append(p)
    a, b = paths
    assert a.read_bytes() != b.read_bytes() and a.stat().st_size > 6 * 2**20
    return a, b


def test_sigkill_at_random_points_leaves_old_or_new_file(tmp_path, big_plans):
    a, b = big_plans
    work = tmp_path / "out"
    work.mkdir()
    target = work / "plan.yaml"
    versions = {a.read_bytes(), b.read_bytes()}
    target.write_bytes(a.read_bytes())
    counted = _child(tmp_path, target, b, 0, 0)  # the os calls one write makes
    assert counted.returncode == 0, counted.stderr
    names = counted.stdout.split()
    calls = len(names)
    first, last = names.index("open") + 1, len(names) - names[::-1].index("replace")  # the temporary's lifetime
    assert names[first - 1:last].count("write") >= 6  # in 1 MiB chunks, then fchmod, fsync, replace
    rng = random.Random(17)
    kills = 0
    left_behind = 0
    for i in range(24):
        source = (a, b)[i % 2]
        k = rng.randint(1, calls) if i % 3 == 0 else rng.randint(first, last)  # anywhere, or while writing
        res = _child(tmp_path, target, source, k, signal.SIGKILL)
        assert res.returncode == -signal.SIGKILL, (k, res.stderr)
        kills += 1
        assert target.read_bytes() in versions, f"target damaged by a SIGKILL at call {k} of {calls}"
        left_behind += bool(_temps(work))
        stale = _temps(work)
        remove_stale_temporaries(target)  # what the next write does first
        assert not _temps(work), f"stale temporaries {stale} not removed"
    assert kills >= 20 and left_behind > 0  # some kills did land between creating and renaming the temporary
    res = _child(tmp_path, target, a, 0, 0)  # a complete write after all that
    assert res.returncode == 0 and target.read_bytes() == a.read_bytes() and not _temps(work)


def test_next_write_removes_a_killed_writers_temporary(tmp_path, big_plans):
    a, b = big_plans
    target = tmp_path / "plan.yaml"
    target.write_bytes(a.read_bytes())
    names = _child(tmp_path, target, b, 0, 0).stdout.split()
    res = _child(tmp_path, target, b, names.index("write") + 1, signal.SIGKILL)  # killed in its first write
    assert res.returncode == -signal.SIGKILL and _temps(tmp_path)
    res = _child(tmp_path, target, a, 0, 0)  # the next run
    assert res.returncode == 0 and not _temps(tmp_path) and target.read_bytes() == a.read_bytes()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_catchable_signals_remove_the_temporary_at_once(tmp_path, big_plans, sig):
    if signal.getsignal(sig) == signal.SIG_IGN:  # e.g. SIGHUP under nohup: the child inherits it, and
        pytest.skip(f"signal {sig} is ignored in this process (nohup?); write_atomic rightly leaves it so")
    a, b = big_plans
    target = tmp_path / "plan.yaml"
    target.write_bytes(a.read_bytes())
    names = _child(tmp_path, target, b, 0, 0).stdout.split()
    target.write_bytes(a.read_bytes())
    first = names.index("write") + 1
    for k in (first, first + 3, names.index("fsync") + 1, names.index("replace")):
        res = _child(tmp_path, target, b, k, sig)
        assert res.returncode != 0
        if sig != signal.SIGINT:
            assert res.returncode == -sig  # the signal is re-delivered: the process ends as it would have
        assert target.read_bytes() in (a.read_bytes(), b.read_bytes())
        assert not _temps(tmp_path), f"temporary left after signal {sig} at call {k}"


def test_permissions_kept_and_new_files_follow_the_umask(tmp_path):
    p = tmp_path / "plan.yaml"
    p.write_text("old")
    p.chmod(0o640)
    write_atomic(p, "new")
    assert p.read_text() == "new" and stat.S_IMODE(p.stat().st_mode) == 0o640
    old = os.umask(0o027)
    try:
        write_atomic(tmp_path / "fresh.yaml", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "fresh.yaml").stat().st_mode) == 0o640


def test_symlinks_are_written_through(tmp_path):
    real = tmp_path / "real" / "plan.yaml"
    real.parent.mkdir()
    real.write_text("old")
    link = tmp_path / "link.yaml"
    os.symlink(real, link)
    write_atomic(link, "new")
    assert link.is_symlink() and real.read_text() == "new"
    dangling = tmp_path / "dangling.yaml"
    os.symlink(tmp_path / "real" / "created.yaml", dangling)
    write_atomic(dangling, "made")
    assert dangling.is_symlink() and (tmp_path / "real" / "created.yaml").read_text() == "made"


def test_file_and_directory_are_fsynced(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    write_atomic(tmp_path / "p.yaml", "x")
    assert synced == [False, True]  # the file, then its directory


def test_a_failed_write_changes_nothing(tmp_path, monkeypatch):
    p = tmp_path / "plan.yaml"
    p.write_text("old")

    def full(fd, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(UserError, match="No space left on device"):
        write_atomic(p, "new")
    monkeypatch.undo()
    assert p.read_text() == "old" and not _temps(tmp_path)


def test_refusals_and_long_names(tmp_path):
    long = "p" * 250 + ".yaml"  # fits NAME_MAX, but ".NAME.sketchplan-PID-RAND.tmp" would not
    write_atomic(tmp_path / long, "ok")
    assert (tmp_path / long).read_text() == "ok" and not _temps(tmp_path)
    with pytest.raises(UserError, match="is a directory"):
        check_output(tmp_path, "--out")
    with pytest.raises(UserError, match="same file"):
        prepare([("--json", str(tmp_path / "r")), ("--junit", str(tmp_path / "r"))])
    hard = tmp_path / "hard.yaml"
    os.link(tmp_path / long, hard)
    with pytest.raises(UserError, match="this command reads"):
        prepare([("--out", str(hard))], [("plan", str(tmp_path / long))])
