"""User-facing errors.

Everything raised as a :class:`SnapvitError` is a mistake the user can fix (bad path, bad budget, unreachable hub,
corrupt bundle). The CLI prints its message as one line and exits non-zero without a traceback; anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import unicodedata

# Characters a terminal acts on rather than shows: C0/C1 controls (ESC starts colour, cursor and screen-clearing
# sequences; CR and NL break the one-line rule), DEL, and the Unicode bidi/line-separator controls that reorder or
# split what is shown. Messages quote file contents (keys, names, paths), so these are shown as escapes instead.
_BIDI = "\u061c\u200e\u200f\u2028\u2029\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"


def printable(text: str) -> str:
    """``text`` with every control character written as a visible escape (ESC -> ``\\x1b``): safe to print on
    a terminal and always one line. Text without such characters comes back unchanged."""
    if text.isprintable():
        return text
    return "".join(_escape(c) if unicodedata.category(c) == "Cc" or c in _BIDI else c for c in text)


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


class SnapvitError(Exception):
    """Base class for errors caused by user input or the environment, reported as one line.

    ``param`` names the library parameter at fault when there is one; the message then starts with that name, and
    the CLI shows the matching flag instead (``flops must lie in (0, 1]`` → ``--flops must lie in (0, 1]``).
    """

    exit_code: int = 1

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(printable(str(message)))  # messages quote file contents: never a terminal escape
        self.param = param


class ModelLoadError(SnapvitError):
    """A model could not be resolved, downloaded or built."""


class UnsupportedModelError(SnapvitError):
    """The model's structure is not one snapvit knows how to prune."""


class BundleError(SnapvitError):
    """An elastic bundle or sliced model on disk is missing, truncated, or inconsistent with its metadata."""


class BudgetError(SnapvitError):
    """A requested budget is out of range or cannot be reached."""


class DataError(SnapvitError):
    """Calibration or evaluation data could not be read."""


class OutputExistsError(SnapvitError):
    """An output path exists and ``--force`` was not given."""


class OutputError(SnapvitError):
    """An output cannot be written where asked: it is an input or the current directory, the wrong kind of path,
    or the system refused (no permission, read-only, disk full)."""


class SnapvitWarning(UserWarning):
    """Something the user asked for was adjusted (e.g. fewer images than requested exist); the run goes on.

    Raised with :func:`warnings.warn`; the CLI shows each as one ``warning:`` line on stderr.
    """
