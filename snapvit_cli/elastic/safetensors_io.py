"""Reading and writing safetensors files safely: one open file per read, one byte layout per write.

**Reading.** Every read of an artifact goes through the handle opened first.

A bundle may be replaced (``os.replace``, a new download into the cache) or rewritten in place while snapvit reads
it. Reading through one file descriptor pins the inode that was opened, so a replacement is never mixed into what
was read; an in-place change (truncation, ``cp`` over it) is caught by comparing the descriptor's size and
modification time before and after, and by the hashes the readers verify. safetensors takes a path, so on Linux
it is given ``/proc/self/fd/N``, which opens the same inode again; elsewhere the path itself, guarded by the inode
check.

**Writing.** safetensors stores ``__metadata__`` from a hash map, so its keys come out in a different order from
one run to the next; :func:`save_canonical` rewrites that object with sorted keys (same length, in place), so the
same tensors and metadata always give the same bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from snapvit_cli.errors import BundleError, SnapvitError
from snapvit_cli.fileio import NotRegularFileError, open_regular, save_safetensors

_PROC_FD = Path("/proc/self/fd")
CHUNK = 1 << 22


class OpenFile:
    """A regular file held open for the lifetime of a reader (closed by :meth:`close` or garbage collection)."""

    def __init__(self, path: str | os.PathLike, what: str = "file"):
        self.path = Path(path)
        if self.path.is_dir():
            raise BundleError(f"{self.path} is a directory, not a {what}")
        try:
            self._file = open_regular(self.path)  # held open on purpose: one version for all reads
        except FileNotFoundError:
            raise BundleError(f"{what} {self.path} does not exist") from None
        except NotRegularFileError as exc:  # a FIFO would block forever, a device never end
            raise BundleError(f"{self.path} is {exc.strerror}") from None
        except OSError as exc:
            raise BundleError(f"cannot open {what} {self.path}: {exc.strerror or exc}") from None
        info = os.fstat(self._file.fileno())
        self.size = info.st_size
        self._stamp = (info.st_ino, info.st_size, info.st_mtime_ns)
        fd_path = _PROC_FD / str(self._file.fileno())
        self._view = str(fd_path) if _PROC_FD.is_dir() and fd_path.exists() else str(self.path)

    @property
    def view(self) -> str:
        """A path that opens this very version of the file (``/proc/self/fd/N``; the path itself without /proc)."""
        return self._view

    def safe_open(self, **kwargs: Any):
        """``safetensors.safe_open`` on this version of the file (``framework="pt"`` unless given).

        Tensors are read with ``pread``, never memory-mapped: a file truncated in place (``cp`` or ``curl -o`` over
        it) then gives a read error, where touching a mapped page past the new end kills the process (SIGBUS)."""
        kwargs.setdefault("framework", "pt")
        kwargs.setdefault("backend", "pread")
        with self.reading():
            return safe_open(self._view, **kwargs)

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """Report any failure to read the file (truncated, corrupt, changed underneath) as one line."""
        try:
            yield
        except SnapvitError:
            raise
        except Exception as exc:  # noqa: BLE001 - safetensors and the OS report bad files with several types
            reason = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise BundleError(
                f"{self.path} cannot be read (truncated, corrupt or changed while read?): {reason}"
            ) from None

    def check_unchanged(self) -> None:
        """Raise if the file was modified in place since it was opened (its size or modification time moved)."""
        info = os.fstat(self._file.fileno())
        if self._view == str(self.path):  # no /proc: the path may now name another file
            try:
                info = os.stat(self.path)
            except OSError:
                info = None
        if info is None or (info.st_ino, info.st_size, info.st_mtime_ns) != self._stamp:
            raise BundleError(f"{self.path} changed while it was being read; nothing was written, try again")

    def sha256(self) -> str:
        """sha256 of the version opened, read through the descriptor (positional reads: thread-safe)."""
        digest = hashlib.sha256()
        fd, offset = self._file.fileno(), 0
        while offset < self.size:
            chunk = os.pread(fd, min(CHUNK, self.size - offset), offset)
            if not chunk:
                raise BundleError(f"{self.path} was truncated while it was being read")
            digest.update(chunk)
            offset += len(chunk)
        return digest.hexdigest()

    def close(self) -> None:
        self._file.close()

    def __del__(self) -> None:
        file = getattr(self, "_file", None)
        if file is not None:
            file.close()


def save_canonical(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str]) -> None:
    """``safetensors.torch.save_file`` with the header's ``__metadata__`` keys sorted: byte-identical reruns."""
    save_safetensors(tensors, path, metadata)  # I/O failures (disk full...) as OSError, for atomic_path/atomic_dir
    with open(path, "r+b") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size), object_pairs_hook=dict)
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > size:  # cannot happen for a reordering; refuse rather than corrupt the file
            raise RuntimeError("canonical safetensors header is longer than the original")
        f.seek(8)
        f.write(text + b" " * (size - len(text)))
