"""Safe file output: atomic replacement, overwrite protection, honest interrupt reports and content hashes.

Every file or folder snapvit writes goes through :func:`atomic_path` or :func:`atomic_dir`. The new output is built
under a temporary name next to the target (``.NAME.PID-XXXXXXXX.tmp``), given the permissions the umask asks for,
flushed to disk, and only then put in place in one step: ``os.replace`` for a file, ``renameat2(RENAME_EXCHANGE)``
for a folder on Linux, which swaps the two folders atomically so that the target is at every instant either the
complete old or the complete new output. SIGINT and SIGTERM are held during that step, so an interrupt lands before
it (the old output is intact) or after it (the new one is complete), and :func:`interrupt_message` says which.

Where ``renameat2`` is unavailable (not Linux, an old C library, or a filesystem that refuses the exchange), a folder
is replaced by two renames: the old one to ``.NAME.old-PID``, the new one onto the target, with signals held across
both. Only a SIGKILL or a power cut between the two leaves no target; the next run that writes the same target then
puts the old folder back before doing anything else. Temporaries left by killed runs (whose process no longer
exists) are removed by the next run that writes the same target.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import hashlib
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from snapvit_cli.errors import OutputError, OutputExistsError

# Test hook: SNAPVIT_TEST_PAUSE=POINT:MARKER makes a write touch MARKER and wait at POINT (one of PAUSE_POINTS), so
# that tests can interrupt it at a known moment. It only ever delays; it never changes what is written. Inert unless
# the test suite's own launcher (tests/_paused.py) sets pause_hook_enabled: the environment alone does nothing.
PAUSE_ENV = "SNAPVIT_TEST_PAUSE"
pause_hook_enabled = False
PAUSE_POINTS = ("staged", "written", "synced", "committed", "cleanup")
HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)


# -- what happened, for interrupt messages ----------------------------------------------------------------------


@dataclass
class WriteRecord:
    """One output this process started writing, and how far it got."""

    path: Path
    existed: bool
    state: str = "writing"  # -> "done" once the new output is in place

    def describe(self) -> str:
        if self.state == "done":
            return f"{self.path} was {'replaced' if self.existed else 'written'} (the new output is complete)"
        if self.existed:
            return f"{self.path} was left as it was (the old output is intact)"
        return f"{self.path} was not written"


_records: list[WriteRecord] = []


def reset_write_log() -> None:
    """Forget earlier writes: called at the start of each command so its interrupt message covers only itself."""
    _records.clear()


def interrupt_message() -> str:
    """What an interrupt left on disk, in one line: every output this command touched is complete old or new."""
    if not _records:
        return "nothing was written"
    return "; ".join(record.describe() for record in _records)


# -- checks before writing --------------------------------------------------------------------------------------


def check_output(
    path: str | os.PathLike, force: bool, *, directory: bool = False, inputs: Iterable[object] = ()
) -> Path:
    """Refuse an output that cannot or must not be written, before any work; return it as a :class:`Path`.

    Refused: an existing output without ``force``; a folder where a file is written or the reverse; the current
    directory or one of its parents; and any output that is one of ``inputs`` or a folder containing one, which
    ``--force`` would delete (entries of ``inputs`` that are not local paths, such as ``hf-hub:`` ids, are skipped).
    """
    path = Path(path)
    _check_not_an_input(path, inputs)
    resolved = Path(os.path.realpath(path))
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise OutputError(f"refusing to write to {path}: it is the current directory or contains it; name a new one")
    if path.is_dir() and not directory:
        raise OutputError(f"{path} is a directory; give a file path for the output")
    if os.path.lexists(path):
        if directory and not path.is_dir():
            raise OutputError(f"{path} exists and is not a folder; give a folder path for the output")
        if not force:
            raise OutputExistsError(f"{path} already exists; pass --force to overwrite it")
    return path


def _check_not_an_input(path: Path, inputs: Iterable[object]) -> None:
    out = os.path.realpath(path)
    for item in inputs:
        if item is None or not isinstance(item, str | os.PathLike):
            continue
        text = os.fspath(item)
        if not text or text.startswith(("hf-hub:", "hf:")) or text == "demo" or not os.path.lexists(text):
            continue
        real = os.path.realpath(text)
        if real == out:
            raise OutputError(f"refusing to write to {path}: it is the input {text}")
        if real.startswith(out.rstrip(os.sep) + os.sep):
            raise OutputError(f"refusing to write to {path}: it contains the input {text}")


# -- atomic writes ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path next to ``path``; it replaces ``path`` only once the block has completed."""
    with _atomic(Path(path), directory=False) as tmp:
        yield tmp


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; it replaces ``path`` (a folder or nothing) only once the block
    has completed, by an atomic exchange where the system has one."""
    with _atomic(Path(path), directory=True) as tmp:
        yield tmp


@contextlib.contextmanager
def _atomic(path: Path, *, directory: bool) -> Iterator[Path]:
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        clean_stale_temporaries(path)
    except OSError as exc:
        raise _io_error(path, exc, existed=os.path.lexists(path)) from None
    record = WriteRecord(path, existed=os.path.lexists(path))
    _records.append(record)
    leftover: Path | None = None
    try:
        try:
            prefix, suffix = f".{path.name}.{os.getpid()}-", ".tmp"
            if directory:
                tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=parent))
            else:
                fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=parent)
                os.close(fd)
                tmp = Path(name)
        except OSError as exc:
            raise _io_error(path, exc, record.existed) from None
        leftover = tmp
        _pause("staged")
        try:
            yield tmp
            _pause("written")
            _finish(tmp, directory)
            _pause("synced")
            with deferred_signals():
                leftover = _commit(tmp, path, directory, record)
                _pause("committed")
        except OSError as exc:
            raise _io_error(path, exc, record.existed) from None
        _pause("cleanup")
    finally:
        if leftover is not None:
            _remove(leftover)


def _io_error(path: Path, exc: OSError, existed: bool) -> OutputError:
    reason = exc.strerror or str(exc)
    kept = "the existing output was left as it was" if existed else "nothing was written"
    return OutputError(f"cannot write {path}: {reason}; {kept}")


def _finish(tmp: Path, directory: bool) -> None:
    """Give what was written the permissions a plain ``open``/``mkdir`` would (mkstemp/mkdtemp use 0600/0700)
    and flush it to disk, so that the rename that follows can never expose an empty or partial file."""
    mask = _umask()
    if not directory:
        os.chmod(tmp, 0o666 & ~mask)
        _fsync(tmp)
        return
    for root, dirs, files in os.walk(tmp):
        for name in files:
            file = os.path.join(root, name)
            if not os.path.islink(file):
                os.chmod(file, 0o666 & ~mask)
                _fsync(file)
        for name in dirs:
            if not os.path.islink(os.path.join(root, name)):
                os.chmod(os.path.join(root, name), 0o777 & ~mask)
        _fsync_dir(root)
    os.chmod(tmp, 0o777 & ~mask)


def _commit(tmp: Path, path: Path, directory: bool, record: WriteRecord) -> Path | None:
    """Put ``tmp`` in place of ``path``; return what is left to delete (the old output), if anything."""
    if not directory:
        os.replace(tmp, path)
        record.state = "done"
        _fsync_dir(path.parent)
        return None
    if not os.path.lexists(path):
        if not _renameat2(tmp, path, RENAME_NOREPLACE):
            if os.path.lexists(path):  # no atomic no-replace rename here: check, then rename
                raise FileExistsError(errno.EEXIST, "the output appeared while it was being written")
            os.rename(tmp, path)
        record.state = "done"
        _fsync_dir(path.parent)
        return None
    if path.is_dir() and not path.is_symlink() and _renameat2(tmp, path, RENAME_EXCHANGE):
        record.state = "done"  # the old folder now lives at the temporary name
        _fsync_dir(path.parent)
        return tmp
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    _remove(old)
    os.rename(path, old)
    os.rename(tmp, path)
    record.state = "done"
    _fsync_dir(path.parent)
    return old


# -- renameat2 --------------------------------------------------------------------------------------------------

AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
_renameat2_fn = None
_renameat2_unsupported: set[int] = set()  # flags the kernel or filesystem refused with EINVAL/ENOSYS


def _load_renameat2():
    global _renameat2_fn
    if _renameat2_fn is None:
        _renameat2_fn = False
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
                fn = libc.renameat2  # glibc >= 2.28, musl >= 1.2.3
                fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
                fn.restype = ctypes.c_int
                _renameat2_fn = fn
            except (OSError, AttributeError):
                pass
    return _renameat2_fn


def renameat2_available(flags: int = RENAME_EXCHANGE) -> bool:
    """Whether this process can call ``renameat2`` with ``flags`` (it may still be refused by a filesystem)."""
    return bool(_load_renameat2()) and flags not in _renameat2_unsupported


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """``renameat2(src, dst, flags)``; False where it is not supported (then the caller falls back), raises
    :class:`OSError` for any other failure."""
    if not renameat2_available(flags):
        return False
    fn = _load_renameat2()
    if fn(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        _renameat2_unsupported.add(flags)
        return False
    raise OSError(code, os.strerror(code), str(dst))


# -- signals ----------------------------------------------------------------------------------------------------

_held: list[int] = []


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT and SIGTERM for the duration of the block, then deliver the first one that arrived.

    Python runs signal handlers in the main thread between bytecodes, so a handler that only records the signal
    makes the block uninterruptible by them; elsewhere than in the main thread nothing can be held (and nothing
    needs to be: Python delivers signals to the main thread only).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for sig in HELD_SIGNALS:
        handler = signal.getsignal(sig)
        if handler is None:  # installed outside Python: leave it alone
            continue
        previous[sig] = handler
        signal.signal(sig, lambda signum, frame: _held.append(signum))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if _held:
            first = _held[0]
            _held.clear()
            signal.raise_signal(first)


# -- leftovers of killed runs -----------------------------------------------------------------------------------


def clean_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporaries that killed runs left next to ``path``; return what was removed or restored.

    ``.NAME.PID-XXXXXXXX.tmp`` and ``.NAME.old-PID`` whose process no longer exists are deleted (names from older
    versions without a PID, ``.NAME.XXXXXXXX.tmp``, too). An ``.NAME.old-PID`` folder is moved back to ``NAME``
    instead when ``NAME`` does not exist: a run killed between the two renames of the fallback replacement.
    """
    path = Path(path)
    parent = path.parent
    name = re.escape(path.name)
    temp = re.compile(rf"\.{name}\.(?:(\d+)-)?[A-Za-z0-9_]{{8}}\.tmp")
    old = re.compile(rf"\.{name}\.old-(\d+)")
    handled = []
    try:
        entries = sorted(os.listdir(parent))
    except FileNotFoundError:
        return handled
    for entry in entries:
        match = temp.fullmatch(entry) or old.fullmatch(entry)
        if match is None or (match.group(1) is not None and _alive(int(match.group(1)))):
            continue
        stale = parent / entry
        if match.re is old and not os.path.lexists(path):
            os.rename(stale, path)
        else:
            _remove(stale)
        handled.append(stale)
    return handled


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- helpers ----------------------------------------------------------------------------------------------------


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _fsync(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename in ``path`` durable; some systems cannot open or sync a folder, which is harmless here."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask would race with other threads)."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _pause(point: str) -> None:
    """The test hook (see ``PAUSE_ENV``): touch the marker and wait up to 30 s, less once a signal was held."""
    spec = os.environ.get(PAUSE_ENV) if pause_hook_enabled else None
    if not spec:
        return
    wanted, _, marker = spec.partition(":")
    if wanted != point:
        return
    Path(marker).write_text(point)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not _held:
        time.sleep(0.02)


def save_safetensors(tensors: dict, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """``safetensors.torch.save_file`` with its I/O failures (disk full, file too large, no permission) raised as
    :class:`OSError`, so that :func:`atomic_path` / :func:`atomic_dir` report them as one line."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        save_file(tensors, str(path), metadata=metadata)
    except SafetensorError as exc:
        found = re.search(r"I/O error: (.*?) \(os error (\d+)\)", str(exc))
        if found is None:
            raise
        raise OSError(int(found.group(2)), found.group(1), str(path)) from None


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks so that multi-GB checkpoints do not need to fit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()
