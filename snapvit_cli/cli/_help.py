"""``-h``: every command's help, drawn by snapvit rather than Typer's default layout.

Typer's layout gives every option seven columns (a ``<bool>`` type for flags, ``<str>`` for choices it cannot see,
negative flags apart), which at 80 columns leaves the help text a dozen characters and cuts words. Here an option
is one row of two columns: its spelling with the value it takes (``-o, --output DIR``, ``--sequential /
--dense-inputs``, ``--device auto|cpu|cuda|mps``) and its help, which wraps between words. Long choice lists move
into the help text. The usage line names arguments as the rows do (``BUNDLE``, no braces).
"""

from __future__ import annotations

import io
import shutil
import sys
from typing import Any

from rich.console import Console, Group
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text
from typer.core import TyperCommand, TyperGroup

MAX_WIDTH = 120  # wider help lines are harder to read
CHOICES_INLINE = 32  # a spelling with its choices longer than this shows them in the help text instead
OPTIONS = "Options"


def _choices(param: Any) -> list[str]:
    desc = getattr(param, "type_descriptor", None)
    if desc is None or not desc.is_choice or not desc.choices:
        return []
    return [str(getattr(choice, "value", choice)) for choice in desc.choices]


def _is_flag(param: Any) -> bool:
    return bool(getattr(param, "is_flag", False) or getattr(param, "count", False))


def spelling(param: Any) -> tuple[str, str]:
    """``(how to write the option, what its help must add)``: ``-o, --output DIR``; choices too long to show
    inline go to the help text."""
    names = sorted(param.opts, key=lambda n: (n.startswith("--"), n))
    text = ", ".join(names)
    if _is_flag(param):
        negative = getattr(param, "secondary_opts", [])
        return (f"{text} / {', '.join(negative)}" if negative else text), ""
    choices = _choices(param)
    if choices:
        inline = f"{text} {'|'.join(choices)}"
        if len(inline) <= CHOICES_INLINE:
            return inline, ""
        return f"{text} {param.metavar or 'CHOICE'}", f"Choices: {', '.join(choices)}."
    return f"{text} {param.metavar or param.name.upper()}", ""


def default_text(param: Any) -> str:
    """``[default: X]`` for what the option does when not given, or nothing."""
    if param.required or param.default is None or not getattr(param, "show_default", True):
        return ""
    if _is_flag(param):
        negative = getattr(param, "secondary_opts", [])
        if not negative:
            return ""
        return f"[default: {(param.opts if param.default else negative)[0].lstrip('-')}]"
    default = getattr(param.default, "value", param.default)
    if isinstance(default, (list, tuple)) and not default:
        return ""
    return f"[default: {default}]"


def _help_text(help_text: str, *extra: str) -> Text:
    text = Text.from_markup(" ".join(help_text.split())) if help_text else Text()
    for part in (e for e in extra if e):
        text.append(" " + part, style="dim")
    return text


def _panel(title: str, rows: list[tuple[str, Text]]) -> Panel:
    table = Table.grid(padding=(0, 2))
    table.add_column(no_wrap=True, style="bold cyan")
    table.add_column(ratio=1)
    for left, right in rows:
        table.add_row(left, right)
    return Panel(table, title=title, title_align="left", border_style="dim")


def usage_pieces(command: Any) -> list[str]:
    """``[OPTIONS] BUNDLE``: arguments named as their help rows name them (optional ones in brackets)."""
    pieces = [command.options_metavar] if command.options_metavar else []
    for param in command.params:
        if param.param_type_name == "argument":
            name = param.metavar or param.name.upper()
            pieces.append(name if param.required else f"[{name}]")
    return pieces


def _usage(command: Any, ctx: Any) -> str:
    pieces = usage_pieces(command) + (["COMMAND [ARGS]..."] if isinstance(command, TyperGroup) else [])
    return f"Usage: {ctx.command_path} {' '.join(pieces)}"


def render(command: Any, ctx: Any) -> str:
    """The whole help screen as text, at the terminal's width (``COLUMNS``), coloured only on a terminal."""
    width = min(shutil.get_terminal_size((80, 24)).columns, MAX_WIDTH)
    console = Console(
        file=io.StringIO(), width=width, force_terminal=sys.stdout.isatty(), highlight=False, soft_wrap=False
    )
    parts: list[Any] = [Text(_usage(command, ctx), style="bold"), Text()]
    if command.help:
        for paragraph in command.help.split("\n\n"):
            parts += [Text.from_markup(" ".join(paragraph.split())), Text()]
    panels: dict[str, list[tuple[str, Text]]] = {}
    for param in command.get_params(ctx):
        if getattr(param, "hidden", False):
            continue
        if param.param_type_name == "argument":
            name = param.metavar or param.name.upper()
            panels.setdefault("Arguments", []).append(
                (name, _help_text(param.help or "", "[required]" if param.required else ""))
            )
            continue
        left, choices = spelling(param)
        panel = getattr(param, "rich_help_panel", None) or OPTIONS
        panels.setdefault(panel, []).append((left, _help_text(param.help or "", choices, default_text(param))))
    order = sorted(panels, key=lambda p: (p != "Arguments", p == OPTIONS))  # arguments first, the generic last
    parts += [_panel(title, panels[title]) for title in order]
    if isinstance(command, TyperGroup):
        rows = [
            (name, Text(escape((sub.help or "").split("\n\n")[0].strip().replace("\n", " "))))
            for name, sub in command.commands.items()
            if not sub.hidden
        ]
        parts.append(_panel("Commands", rows))
    if command.epilog:
        parts += [Text(), Text.from_markup(command.epilog)]
    console.print(Group(*parts))
    return console.file.getvalue()


class SnapvitCommand(TyperCommand):
    """A command whose ``-h`` is :func:`render`'s, and whose usage line in errors reads the same."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return usage_pieces(self)

    def format_help(self, ctx: Any, formatter: Any) -> None:
        formatter.write(render(self, ctx))


class SnapvitGroup(TyperGroup):
    """The ``snapvit`` group, with :func:`render`'s ``-h``."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        formatter.write(render(self, ctx))
