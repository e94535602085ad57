"""What every command shares for output: the two consoles, one-line user errors and warnings, plain text when
stdout is not a terminal, JSON on stdout, a quiet Hub.

On a terminal, results are rich text and tables. Anywhere else (a pipe, a file, a CI log) every message is one
unwrapped line and every table row one tab-separated line, so ``grep``, ``tail`` and ``cut`` see whole records.
Rich honours ``NO_COLOR`` and ``TERM=dumb`` itself.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import math
import signal
import struct
import sys
import threading
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from snapvit_cli.errors import SnapvitError, SnapvitWarning, printable
from snapvit_cli.launcher import launched, launched_quietly

out = Console()
err = Console(stderr=True)
# --quiet: results stay off stdout too (tables, "wrote ..."); errors, warnings and --json still print.
_quiet: contextvars.ContextVar[bool] = contextvars.ContextVar("snapvit_quiet", default=False)


def say(message: str, *, markup: bool = True) -> None:
    """One message on stdout: rich on a terminal, one plain unwrapped line elsewhere (control characters from file
    contents or paths shown as escapes, as in every message here)."""
    if _quiet.get():
        return
    message = printable(message)
    if out.is_terminal:
        out.print(message, markup=markup, highlight=False)
    else:
        sys.stdout.write((Text.from_markup(message).plain if markup else message) + "\n")


def note(message: str) -> None:
    """One plain line on stderr, never wrapped (progress summaries, warnings)."""
    err.print(printable(message), markup=False, highlight=False, soft_wrap=True)


def print_table(columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[str]], title: str | None = None) -> None:
    """``columns`` as (header, justify) pairs. A rich table on a terminal; elsewhere a header line and one
    tab-separated line per row, never wrapped or truncated."""
    if _quiet.get():
        return
    rows = [[printable(cell) for cell in row] for row in rows]
    if not out.is_terminal:
        for row in ([name for name, _ in columns], *rows):
            sys.stdout.write("\t".join(row) + "\n")
        return
    table = Table(title=title, show_edge=False)
    for name, justify in columns:
        table.add_column(name, justify=justify, overflow="fold")
    for row in rows:
        table.add_row(*row)
    out.print(table)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if issubclass(category, SnapvitWarning):
        note(f"warning: {message}")
    else:
        _show_warning(message, category, filename, lineno, file, line)


_show_warning = warnings.showwarning


# Library parameters whose flag is not ``--`` + the name with dashes (see SnapvitError.param).
FLAGS = {"k": "--knn-k", "score": "--score", "ga_bounds": "--ga-bounds/--no-ga-bounds"}


def flag_message(exc: SnapvitError, flags: dict[str, str] | None = None) -> str:
    """``exc``'s message with the library parameter it names replaced by the command's flag: the one place where
    library names become CLI names (``flags`` overrides :data:`FLAGS` for one command)."""
    message = str(exc).replace("force=True", "--force")  # the library's keyword is the command's flag
    if exc.param is None or not message.startswith(exc.param):
        return message
    flag = {**FLAGS, **(flags or {})}.get(exc.param, "--" + exc.param.replace("_", "-"))
    return flag + message[len(exc.param) :]


def user_errors(func=None, *, flags: dict[str, str] | None = None):
    """Turn a :class:`SnapvitError` into one line on stderr and its exit code, without a traceback; show the
    library's :class:`SnapvitWarning` as one ``warning:`` line each; SIGINT and SIGTERM into one line saying what
    is on disk (every output is the complete old or the complete new one).

    Use as ``@user_errors`` or ``@user_errors(flags={"samples": "--correct-samples"})``.
    """
    if func is None:
        return functools.partial(user_errors, flags=flags)

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        from snapvit_cli import fileio

        quiet = _quiet.set(bool(kwargs.get("quiet")))
        with fileio.write_log() as written:
            try:
                with warnings.catch_warnings(), _terminate_as_interrupt():
                    warnings.simplefilter("always", SnapvitWarning)
                    warnings.showwarning = _one_line_warning
                    return func(*args, **kwargs)
            except SnapvitError as exc:
                report(exc, flags)
                raise typer.Exit(exc.exit_code) from None
            except KeyboardInterrupt as exc:
                terminated = isinstance(exc, Terminated)
                what = escape(printable(fileio.interrupt_message(written)))
                err.print(
                    f"{'terminated' if terminated else 'interrupted'}; {what}",
                    highlight=False,
                    soft_wrap=True,
                )
                raise typer.Exit(143 if terminated else 130) from None
            finally:
                _quiet.reset(quiet)

    return wrapper


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that temporaries are removed and the same message is printed."""


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        raise Terminated()

    # Under torchrun a SIGTERM means another rank failed: say that, as the one error line of this rank.
    previous = signal.signal(signal.SIGTERM, stopped_by_launcher if launched() else terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def report(exc: SnapvitError, flags: dict[str, str] | None = None) -> None:
    """The one line of a user error. Under torchrun rank 0 alone speaks, and once it does, the launcher's SIGTERM
    (sent when another rank failed) is ignored, so that a failure ends with one line."""
    launched, rank = launched_quietly()  # a bad WORLD_SIZE is itself the error being reported
    if launched:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if not launched or rank == 0:
        message = escape(printable(flag_message(exc, flags)))
        err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)


def stopped_by_launcher(_signum, _frame) -> None:
    """torchrun sends SIGTERM to the other ranks when one fails: end this one as a user error (one line, no bundle)."""
    raise SnapvitError("stopped: another rank of the torchrun job failed; no bundle was written")


#: The version of the JSON every writing command prints (docs/json.md); raised when a key changes meaning.
SCHEMA = "snapvit/1"


def emit_json(data: Any) -> None:
    """``data`` as indented JSON on stdout, every float32 value in its shortest form (0.605, not 0.6050000190734863)."""
    sys.stdout.write(json.dumps(_without_float32_noise(data), indent=2) + "\n")


def emit_result(command: str, written: Sequence[Any], results: Sequence[dict[str, Any]]) -> None:
    """The one shape of ``--json`` for the commands that write (score, import-scores, slice, export, push):
    ``{"schema", "command", "written": [paths], "results": [one record per output]}``."""
    emit_json(
        {"schema": SCHEMA, "command": command, "written": [str(p) for p in written], "results": list(results)}
    )


def _without_float32_noise(data: Any) -> Any:
    """Floats that are exactly a float32 (read from a tensor) become the shortest decimal of that float32; other
    floats and values are unchanged, so nothing computed in float64 loses precision."""
    if isinstance(data, float) and math.isfinite(data):
        as32 = struct.pack("f", data) if abs(data) < 3.4e38 else None
        if as32 is None or struct.unpack("f", as32)[0] != data:
            return data
        for digits in range(1, 10):
            short = float(f"{data:.{digits}g}")
            if struct.pack("f", short) == as32:
                return short
        return data
    if isinstance(data, dict):
        return {k: _without_float32_noise(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_without_float32_noise(v) for v in data]
    return data


@contextlib.contextmanager
def quiet_hub(quiet: bool) -> Iterator[None]:
    """Keep huggingface_hub's progress bars and retry warnings off stderr unless a person is watching it."""
    if not quiet and err.is_interactive:
        yield
        return
    from huggingface_hub.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
        logging,
    )

    bars_were_off, verbosity = are_progress_bars_disabled(), logging.get_verbosity()
    disable_progress_bars()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if not bars_were_off:
            enable_progress_bars()
