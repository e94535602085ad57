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

Without ``force`` nothing is ever replaced, even an output that appears while this one is written (a second run on
the same target): the commit is a no-replace rename (``renameat2(RENAME_NOREPLACE)``, else ``link`` + ``unlink``
for a file and ``mkdir`` + ``rename`` for a folder) and fails with "D appeared while writing; nothing replaced".
With ``force`` a folder is replaced only when everything in it is a file this writer would write there
(``owned``): ``--force`` replaces snapvit's own outputs, never a folder holding someone's other files.

Reading: :func:`open_regular` is how every reader opens a file a user names; it refuses FIFOs, devices and
sockets before they can block or stream forever.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import ctypes.util
import errno
import hashlib
import os
import re
import shutil
import signal
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

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


# The outputs of the current command, per thread and task: set by :func:`write_log` (the CLI wraps each command in
# one); outside any log nothing is recorded, so a library caller's writes never accumulate.
_current_log: contextvars.ContextVar[list[WriteRecord] | None] = contextvars.ContextVar("snapvit_writes", default=None)


@contextlib.contextmanager
def write_log() -> Iterator[list[WriteRecord]]:
    """Record every output started inside the block (in this thread or task only) into the yielded list, for
    :func:`interrupt_message`; logs nest, and the innermost one records."""
    records: list[WriteRecord] = []
    token = _current_log.set(records)
    try:
        yield records
    finally:
        _current_log.reset(token)


def interrupt_message(records: list[WriteRecord]) -> str:
    """What an interrupt left on disk, in one line: every output in ``records`` is complete old or new."""
    if not records:
        return "nothing was written"
    return "; ".join(record.describe() for record in records)


# -- checks before writing --------------------------------------------------------------------------------------


def check_output(
    path: str | os.PathLike,
    force: bool,
    *,
    directory: bool = False,
    inputs: Iterable[object] = (),
    owned: Collection[str] = (),
) -> Path:
    """Refuse an output that cannot or must not be written, before any work; return it as a :class:`Path`.

    Refused: an existing output without ``force``; a folder where a file is written or the reverse; the current
    directory or one of its parents; any output that is one of ``inputs`` or a folder containing one, which
    ``--force`` would delete (entries of ``inputs`` that are not local paths, such as ``hf-hub:`` ids, are skipped);
    and, even with ``force``, an existing folder holding anything but the files ``owned`` (relative paths) that
    this writer puts there: ``--force`` replaces snapvit's own outputs, never someone's other files.
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
            raise OutputExistsError(f"{path} already exists; pass force=True to overwrite it")
        if directory:
            check_owned(path, owned)
    return path


def check_owned(folder: Path, owned: Collection[str]) -> None:
    """Raise unless everything in ``folder`` is one of the files ``owned`` (what the writer puts there)."""
    foreign = _foreign_entries(folder, owned)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise OutputError(
            f"refusing to replace {folder}: it holds {shown}, which snapvit did not write there; "
            "move those away or choose another output"
        )


def _foreign_entries(folder: Path, owned: Collection[str]) -> list[str]:
    """Entries of ``folder`` (relative paths, sorted) that are not files in ``owned`` or folders leading to one."""
    if folder.is_symlink() or not folder.is_dir():  # a link is replaced itself, never what it points to
        return []
    names = {os.path.normpath(name) for name in owned}
    parents = {os.path.normpath(os.path.join(*Path(n).parts[:i])) for n in names for i in range(1, len(Path(n).parts))}
    foreign: list[str] = []
    for root, dirs, files in os.walk(folder):
        rel = os.path.relpath(root, folder)
        for name in sorted(dirs):
            entry = os.path.normpath(os.path.join(rel, name))
            if entry not in parents or os.path.islink(os.path.join(root, name)):
                foreign.append(entry)
        dirs[:] = [d for d in dirs if os.path.normpath(os.path.join(rel, d)) not in foreign]
        for name in sorted(files):
            entry = os.path.normpath(os.path.join(rel, name))
            full = os.path.join(root, name)
            if entry not in names or os.path.islink(full) or not os.path.isfile(full):
                foreign.append(entry)
    return sorted(foreign)


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
def atomic_path(path: str | os.PathLike, *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary file path next to ``path``; it is put in place only once the block has completed, and
    replaces an existing ``path`` only with ``force`` (else: "appeared while writing; nothing replaced")."""
    with _atomic(Path(path), directory=False, force=force, owned=()) as tmp:
        yield tmp


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, force: bool = False, owned: Collection[str] = ()) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; it is put in place only once the block has completed, by an
    atomic exchange where the system has one. An existing ``path`` is replaced only with ``force``, and only when
    it holds nothing but the files ``owned`` (checked again at the commit)."""
    with _atomic(Path(path), directory=True, force=force, owned=owned) as tmp:
        yield tmp


@contextlib.contextmanager
def _atomic(path: Path, *, directory: bool, force: bool, owned: Collection[str]) -> Iterator[Path]:
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        clean_stale_temporaries(path)
    except OSError as exc:
        raise _io_error(path, exc, existed=os.path.lexists(path)) from None
    record = WriteRecord(path, existed=os.path.lexists(path))
    log = _current_log.get()
    if log is not None:
        log.append(record)
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
                leftover = _commit(tmp, path, directory, record, force=force, owned=owned)
                _pause("committed")
        except FileExistsError:
            raise OutputExistsError(f"{path} appeared while writing; nothing replaced") from None
        except OSError as exc:
            raise _io_error(path, exc, record.existed) from None
        _pause("cleanup")
    finally:
        if leftover is not None:
            _remove(leftover)


class WriteError(OutputError):
    """The system refused to write ``path`` (disk full, no permission...); the output is as it was."""

    def __init__(self, path: Path, reason: str, existed: bool) -> None:
        kept = "the existing output was left as it was" if existed else "nothing was written"
        super().__init__(f"cannot write {path}: {reason}; {kept}")
        self.path, self.reason, self.existed = path, reason, existed

    def among(self, done: Sequence[tuple[Path, bool]], pending: Sequence[Path]) -> OutputError:
        """This failure in a command writing several outputs: one line saying, per output, what is on disk (like
        :func:`interrupt_message`): ``done`` (path, existed before) were written, ``pending`` never started."""
        records = [WriteRecord(path, existed, "done") for path, existed in done]
        records += [WriteRecord(self.path, self.existed)]
        records += [WriteRecord(Path(path), os.path.lexists(path)) for path in pending]
        return OutputError(f"cannot write {self.path}: {self.reason}; " + "; ".join(r.describe() for r in records))


def _io_error(path: Path, exc: OSError, existed: bool) -> WriteError:
    return WriteError(path, exc.strerror or str(exc), existed)


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


def _commit(
    tmp: Path, path: Path, directory: bool, record: WriteRecord, *, force: bool, owned: Collection[str]
) -> Path | None:
    """Put ``tmp`` in place of ``path``; return what is left to delete (the old output), if anything.

    Without ``force`` (or when nothing is there) the rename never replaces anything: an output that appeared
    meanwhile raises :class:`FileExistsError`. With ``force`` a folder holding files it does not ``own`` raises
    :class:`OutputError`, checked before the exchange and again on what the exchange took out (then swapped back).
    """
    if not force or not os.path.lexists(path):
        _rename_noreplace(tmp, path, directory)
        record.state = "done"
        _fsync_dir(path.parent)
        return None
    if not directory:
        os.replace(tmp, path)
        record.state = "done"
        _fsync_dir(path.parent)
        return None
    check_owned(path, owned)
    if path.is_dir() and not path.is_symlink() and _renameat2(tmp, path, RENAME_EXCHANGE):
        if _foreign_entries(tmp, owned):  # written into between the check and the exchange: put it back
            _renameat2(tmp, path, RENAME_EXCHANGE)
            check_owned(path, owned)
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


def _rename_noreplace(tmp: Path, path: Path, directory: bool) -> None:
    """Rename ``tmp`` to ``path`` unless ``path`` exists (:class:`FileExistsError`), atomically: ``renameat2``'s
    ``RENAME_NOREPLACE``, else a hard link (which never replaces) for a file, or for a folder an empty folder
    created first (``mkdir`` never replaces) that the rename then takes the place of."""
    if _renameat2(tmp, path, RENAME_NOREPLACE):
        return
    if not directory:
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise
        except OSError:  # a filesystem without hard links: check, then rename
            if os.path.lexists(path):
                raise FileExistsError(errno.EEXIST, "appeared while writing", str(path)) from None
            os.rename(tmp, path)
            return
        os.unlink(tmp)
        return
    os.mkdir(path)
    try:
        os.rename(tmp, path)
    except OSError as exc:  # something was put into the folder meanwhile: that is someone else's output
        with contextlib.suppress(OSError):
            os.rmdir(path)
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise FileExistsError(errno.EEXIST, "appeared while writing", str(path)) from None
        raise


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
    """The test hook (see ``PAUSE_ENV``): touch the marker and wait up to 30 s, less once a signal was held or the
    test removed the marker (which lets a second writer run while this one waits)."""
    spec = os.environ.get(PAUSE_ENV) if pause_hook_enabled else None
    if not spec:
        return
    wanted, _, marker = spec.partition(":")
    if wanted != point:
        return
    Path(marker).write_text(point)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not _held and os.path.exists(marker):
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


class NotRegularFileError(OSError):
    """A path a reader was given names a FIFO, device, socket or folder: reading it could block or never end."""


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """Open a file a user named for reading, refusing anything but a regular file before it can block.

    A FIFO named ``model.safetensors`` would make a plain ``open`` wait forever for a writer, and a device
    (``/dev/zero``) never ends; so the path is checked first, then opened non-blocking (a FIFO swapped in after
    the check opens at once) and checked again on the descriptor, which is what is read. Raises
    :class:`NotRegularFileError` (an :class:`OSError`) for anything else, and the usual ``OSError`` otherwise.
    """
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):
        raise _not_regular(path, info.st_mode)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _not_regular(path, info.st_mode)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def descriptor_path(file: BinaryIO, path: str | os.PathLike) -> str:
    """A path that opens the very file ``file`` holds open (``/proc/self/fd/N`` on Linux), for libraries that take
    a path (safetensors); elsewhere ``path`` itself."""
    view = f"/proc/self/fd/{file.fileno()}"
    return view if os.path.exists(view) else os.fspath(path)


def _not_regular(path: str | os.PathLike, mode: int) -> NotRegularFileError:
    kinds = {stat.S_ISDIR: "a folder", stat.S_ISFIFO: "a FIFO (named pipe)", stat.S_ISSOCK: "a socket"}
    kinds.update({stat.S_ISCHR: "a device", stat.S_ISBLK: "a device"})
    kind = next((name for test, name in kinds.items() if test(mode)), "something else")
    return NotRegularFileError(errno.EINVAL, f"{kind}, not a regular file", str(path))


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks so that multi-GB checkpoints do not need to fit in memory."""
    with open_regular(path) as f:
        return sha256_stream(f, chunk_size)


def sha256_stream(file: BinaryIO, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of what is left to read in an open binary file, in chunks."""
    digest = hashlib.sha256()
    for chunk in iter(lambda: file.read(chunk_size), b""):
        digest.update(chunk)
    return digest.hexdigest()
