"""Writing the files sketchplan produces (plans, reports, profiles, spectra, plots) without ever damaging one.

Rules, checked by ``check_output`` before any work is done (the CLI calls ``prepare`` first thing) and again
by ``write_atomic`` when the bytes are ready:

- An output is a regular file. An empty name, a directory, a device node, a FIFO or a socket is refused (a
  device is never replaced by a file), so is a path naming a file sketchplan is reading in the same command
  (``show P --plot P``, ``check P --junit P``) and two outputs naming one file.
- Symbolic links are written *through*: the link stays, the file it points to gets the new content (a dangling
  link creates its target). A link loop is refused.
- A read-only or immutable file is refused, never replaced; so is a directory sketchplan cannot create files
  in, a missing directory and a name longer than the file system allows.
- The write is atomic: the new content goes to a hidden temporary ``.NAME.sketchplan-PID-RANDOM.tmp`` in the
  target's directory (a hash of NAME when the name is too long to extend), is fsynced, takes the old file's
  permission bits (and owner, where allowed), then replaces the target by rename, and the directory is
  fsynced. A reader sees the old or the new complete file, never a part.
- The temporary is removed on every failure path: exceptions, Ctrl-C, SIGTERM and SIGHUP (the signal is
  re-delivered after the clean-up, so the process still ends as it would have). A SIGKILL cannot be caught:
  the next write of the same target removes the temporaries of writers that no longer run.
- Hard links to the target keep the old content (the rename gives the target a new inode).
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import signal
import stat
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

_CHUNK = 1 << 20
TEMP_MARK = ".sketchplan-"  #: in every named temporary: ``.NAME.sketchplan-PID-RANDOM.tmp``
_CAUGHT_SIGNALS = tuple(getattr(signal, s) for s in ("SIGTERM", "SIGHUP") if hasattr(signal, s))


@dataclass(frozen=True)
class Output:
    """A checked output: the flag or role that named it, the path as given and the file that will be written."""

    label: str
    path: str
    target: Path


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _kind(mode: int) -> str:
    return ("a directory" if stat.S_ISDIR(mode) else "a character device" if stat.S_ISCHR(mode) else
            "a block device" if stat.S_ISBLK(mode) else "a FIFO" if stat.S_ISFIFO(mode) else
            "a socket" if stat.S_ISSOCK(mode) else "not a regular file")


def _name_max(directory: Path) -> int:
    try:
        return os.pathconf(directory, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def check_output(path: str | os.PathLike, label: str = "output") -> Path:
    """The file that writing ``path`` will replace or create (symlinks resolved), or a ``UserError`` naming
    ``label`` (the flag) when it must not or cannot be written (see the module docstring). Creates nothing."""
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    shown = f"{label} {text!r}"
    if not text.strip():
        raise UserError(f"{label} is empty; give a file name such as plan.yaml.")
    if "\0" in text:
        raise UserError(f"{shown} contains a NUL character; give a plain file name.")
    if text.endswith(("/", os.sep)) or Path(text).name in ("", ".", ".."):
        raise UserError(f"{shown} names a directory; give the path of a file (inside it, or without the trailing "
                        "slash).")
    p = Path(text)
    try:
        if p.is_symlink():
            os.stat(p)  # raises ELOOP for a loop; a dangling link is fine (its target is created)
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UserError(f"{shown} is a symbolic link loop; give a file path.") from None
        if exc.errno == errno.ENAMETOOLONG:
            raise UserError(f"{shown} is longer than the file system allows; give a shorter path.") from None
        raise UserError(f"cannot write {shown} ({_why(exc)}); choose another path.") from None
    target = Path(os.path.realpath(p))
    parent = target.parent
    if len(os.fsencode(target.name)) > _name_max(parent if parent.is_dir() else Path("/")):
        raise UserError(f"{shown}: the file name is {len(os.fsencode(target.name))} bytes, longer than the file "
                        f"system allows ({_name_max(parent if parent.is_dir() else Path('/'))}); give a shorter name.")
    try:
        st = os.stat(target)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            raise UserError(f"{shown} is longer than the file system allows; give a shorter path.") from None
        if exc.errno == errno.ENOTDIR:
            raise UserError(f"cannot write {shown}: a part of the path is a file, not a directory; choose "
                            "another path.") from None
        raise UserError(f"cannot write {shown} ({_why(exc)}); choose another path.") from None
    if st is not None:
        if not stat.S_ISREG(st.st_mode):
            what = _kind(st.st_mode)
            fix = "give a file path inside it" if stat.S_ISDIR(st.st_mode) else "sketchplan writes outputs only " \
                "to regular files; give a file path"
            via = f" (through the link to {str(target)!r})" if str(target) != os.path.abspath(text) else ""
            raise UserError(f"{shown}{via} is {what}; {fix}.")
        if not (st.st_mode & 0o222) or not os.access(target, os.W_OK):
            raise UserError(f"{shown} is read-only (or immutable); make it writable or choose another path.")
    if not parent.is_dir():
        missing = parent
        while not missing.parent.is_dir() and missing.parent != missing:
            missing = missing.parent
        if missing.exists():
            raise UserError(f"cannot write {shown}: {str(missing)!r} is not a directory; choose another path.")
        raise UserError(f"cannot write {shown}: directory {str(parent)!r} does not exist; create it or choose "
                        "another path.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {shown}: directory {str(parent)!r} is not writable; choose another path.")
    return target


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def prepare(outputs: list[tuple[str, str | None]], inputs: list[tuple[str, str | None]] = ()) -> dict[str, Output]:
    """Check every output before any work: each with ``check_output``, none naming one of the ``inputs`` (files
    this command reads: ``(label, path)``), no two naming the same file, and each directory really accepts a new
    file (a temporary is created and removed). Returns the checked outputs by label (None paths skipped)."""
    checked: dict[str, Output] = {}
    for label, path in outputs:
        if path is None:
            continue
        target = check_output(path, label)
        for other in checked.values():
            if other.target == target:
                raise UserError(f"{label} and {other.label} name the same file {path!r}; give them different paths.")
        checked[label] = Output(label, os.fspath(path), target)
    for out in checked.values():
        try:
            ts = os.stat(out.target)
        except OSError:
            continue  # does not exist yet: it cannot be an input
        for what, ipath in inputs:
            if not ipath:
                continue
            try:
                if _same(ts, os.stat(ipath)):
                    raise UserError(f"{out.label} {out.path!r} is the {what} this command reads; write the output "
                                    "to another path.")
            except OSError:
                continue
    for out in checked.values():
        _probe_directory(out)
    return checked


def _probe_directory(out: Output) -> None:
    """Create and remove a temporary next to the target: the directory accepts new files (read-only file
    systems, full inode tables and permission quirks show up here, before the work)."""
    try:
        fd, tmp = _open_temp(out.target)
    except OSError as exc:
        raise UserError(f"cannot write {out.label} {out.path!r} ({_why(exc)}); choose another path.") from None
    os.close(fd)
    _unlink_quietly(tmp)


def _temp_name(target: Path) -> str:
    stem = target.name
    name = f".{stem}{TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}.tmp"
    if len(os.fsencode(name)) > _name_max(target.parent):
        stem = hashlib.sha256(os.fsencode(stem)).hexdigest()[:16]
        name = f".{stem}{TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}.tmp"
    return name


def _temp_prefixes(target: Path) -> tuple[str, str]:
    return (f".{target.name}{TEMP_MARK}", f".{hashlib.sha256(os.fsencode(target.name)).hexdigest()[:16]}{TEMP_MARK}")


def _open_temp(target: Path, mode: int = 0o600) -> tuple[int, Path]:
    """A new, hidden temporary file in the target's directory: (fd, its path)."""
    tmp = target.parent / _temp_name(target)
    return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode), tmp


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def remove_stale_temporaries(target: str | os.PathLike) -> list[Path]:
    """Remove the temporaries that writers of ``target`` left when they were killed (their process is gone)."""
    target = Path(target)
    removed = []
    prefixes = _temp_prefixes(target)
    try:
        names = os.listdir(target.parent)
    except OSError:
        return removed
    for name in names:
        for prefix in prefixes:
            if name.startswith(prefix) and name.endswith(".tmp"):
                pid_text = name[len(prefix):].split("-", 1)[0]
                if pid_text.isdigit() and not _alive(int(pid_text)):
                    _unlink_quietly(target.parent / name)
                    removed.append(target.parent / name)
    return removed


class _Signalled(BaseException):
    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@contextmanager
def _signals_raise():
    """While writing, SIGTERM and SIGHUP (when they would end the process) raise, so the temporary is removed;
    afterwards the signal is delivered again with its original handler."""
    installed: dict[int, object] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in _CAUGHT_SIGNALS:
            try:
                if signal.getsignal(sig) == signal.SIG_DFL:
                    installed[sig] = signal.signal(sig, _raise_signalled)
            except (ValueError, OSError):
                pass
    try:
        yield
    except _Signalled as exc:
        for sig, old in installed.items():
            signal.signal(sig, old)
        installed = {}
        signal.raise_signal(exc.signum)  # the default action: the process ends here
        raise SystemExit(128 + exc.signum) from None  # pragma: no cover - only if the default did not end it
    finally:
        for sig, old in installed.items():
            signal.signal(sig, old)


def _raise_signalled(signum, frame):
    raise _Signalled(signum)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot fsync a directory
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike, data: str | bytes, label: str = "output") -> Path:
    """Write ``data`` (text is UTF-8) to ``path`` atomically and durably (module docstring); returns the path.

    Problems are ``UserError``s naming ``label`` and the path; the target is untouched and no temporary remains.
    """
    target = check_output(path, label)
    shown = f"{label} {os.fspath(path)!r}"
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    remove_stale_temporaries(target)
    try:
        old = os.stat(target)
        mode = stat.S_IMODE(old.st_mode)
    except FileNotFoundError:
        old, mode = None, 0o666 & ~_umask()
    with _signals_raise():
        fd, tmp = -1, None
        try:
            fd, tmp = _open_temp(target)
            view = memoryview(payload)
            while view:  # in chunks: each write is bounded, and a signal is handled between two
                n = os.write(fd, view[:_CHUNK])
                view = view[n:]
            os.fchmod(fd, mode)
            if old is not None and (old.st_uid, old.st_gid) != (os.geteuid(), os.getegid()):
                try:
                    os.fchown(fd, old.st_uid, old.st_gid)
                except OSError:
                    pass  # not allowed: the file becomes ours, with the old permission bits
            os.fsync(fd)
            os.replace(tmp, target)
            tmp = None
            _fsync_dir(target.parent)
        except OSError as exc:
            raise UserError(f"cannot write {shown} ({_why(exc)}); nothing was changed.") from None
        finally:
            if fd >= 0:
                os.close(fd)
            if tmp is not None:
                _unlink_quietly(tmp)
    return Path(os.fspath(path))
