"""Progress of long stages on stderr, for every command: one helper, two renderings.

On an interactive terminal: rich bars with count, elapsed time and ETA. Anywhere else (a pipe, a CI log, ``TERM=dumb``):
the same rich columns rendered as plain timestamped lines, at most one per stage per 10 % of its work or per 30 s,
plus its first and last step, so a log shows life without flooding. ``--quiet`` turns both off (``enabled=False``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from snapvit_cli.cli._output import err, note
from snapvit_cli.errors import printable

# A plain line at least every PLAIN_STEP of a stage's total and at most every PLAIN_INTERVAL_S seconds apart
# otherwise (both bounded: ~10 lines per stage, ~2 per minute while a step is slow).
PLAIN_STEP = 0.1
PLAIN_INTERVAL_S = 30.0

# update(stage, done, total, best=None): ``total`` 0 when unknown; ``best`` (if any) is shown through ``detail``.
Update = Callable[..., None]


class _PlainLines:
    """Decides when a stage deserves a plain line: its first step, each PLAIN_STEP of progress, every
    PLAIN_INTERVAL_S, and its last step."""

    def __init__(self) -> None:
        self.last: dict[Any, tuple[float, float]] = {}  # task id -> (fraction, time) of the last line

    def due(self, task_id: Any, done: int, total: int) -> bool:
        fraction = done / total if total else 0.0
        now = time.monotonic()
        previous = self.last.get(task_id)
        if (
            previous is None
            or (total and done >= total)
            or fraction - previous[0] >= PLAIN_STEP - 1e-9
            or now - previous[1] >= PLAIN_INTERVAL_S
        ):
            self.last[task_id] = (fraction, now)
            return True
        return False


@contextlib.contextmanager
def progress_bars(
    enabled: bool,
    labels: dict[str, str] | None = None,
    detail: Callable[[float], str] | None = None,
    transient: bool = False,
) -> Iterator[Update | None]:
    """A ``update(stage, done, total, best=None)`` callback for the library's ``progress`` parameters, or None when
    ``enabled`` is false. ``labels`` renames stages; ``detail(best)`` formats the optional fourth value."""
    if not enabled:
        yield None
        return
    interactive = err.is_interactive
    columns = [
        TextColumn("{task.description}", markup=False),  # stage labels hold paths: never markup
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[detail]}", markup=False),
    ]
    bars = Progress(*columns, console=err, transient=transient, disable=not interactive)
    tasks: dict[str, Any] = {}
    lines = _PlainLines()

    def update(stage: str, done: int, total: int, best: float | None = None) -> None:
        shown = "" if best is None or detail is None else detail(best)
        if stage not in tasks:
            tasks[stage] = bars.add_task((labels or {}).get(stage, stage), total=total or None, detail=shown)
        task_id = tasks[stage]
        bars.update(task_id, completed=done, total=total or None, detail=shown)
        if not interactive and lines.due(task_id, done, total):
            task = next(t for t in bars.tasks if t.id == task_id)
            if total and done >= total:
                task.finished_time = task.elapsed  # rich sets it only on a refresh, which a disabled bar never does
            note(f"{datetime.now():%H:%M:%S} {_plain_line(task, columns)}")

    with bars:
        yield update


@contextlib.contextmanager
def status(enabled: bool, message: str) -> Iterator[None]:
    """A spinner with ``message`` on a terminal; one timestamped line elsewhere; nothing when not ``enabled``."""
    message = printable(message)  # names paths and models: never a terminal escape
    if not enabled:
        yield
    elif err.is_interactive:
        description = TextColumn("{task.description}", markup=False)
        with Progress(SpinnerColumn(), description, TimeElapsedColumn(), console=err, transient=True) as bar:
            bar.add_task(message, total=None)
            yield
    else:
        note(f"{datetime.now():%H:%M:%S} {message}")
        yield


def _plain_line(task: Any, columns: list[Any]) -> str:
    """The bar's columns as one line of text: ``label done/total pct% elapsed eta remaining detail``."""

    def text(kind: type) -> str:
        column = next(c for c in columns if type(c) is kind)
        rendered = column(task)
        return rendered.plain.strip() if hasattr(rendered, "plain") else str(rendered).strip()

    parts = [task.description, text(MofNCompleteColumn).replace(" ", "")]
    if task.total:
        parts += [text(TaskProgressColumn), f"elapsed {text(TimeElapsedColumn)}", f"eta {text(TimeRemainingColumn)}"]
    else:
        parts.append(f"elapsed {text(TimeElapsedColumn)}")
    if task.fields.get("detail"):
        parts.append(task.fields["detail"])
    return " ".join(parts)


@contextlib.contextmanager
def transfer(enabled: bool, message: str) -> Iterator[None]:
    """Around a Hub download or upload: on a terminal huggingface_hub draws its own bars (size, rate, ETA), so
    nothing is added; elsewhere, where those bars are hidden, one timestamped line says what is transferred."""
    with status(enabled and not err.is_interactive, message):
        yield
