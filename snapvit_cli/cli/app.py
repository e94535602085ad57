"""The ``snapvit`` application: the Typer app, its root options, and one registered function per command module.

torch and timm are imported inside the commands so that ``snapvit --help`` starts instantly. Errors the user can
fix (:class:`~snapvit_cli.errors.SnapvitError`) print one line on stderr and exit with code 1; ``--json`` puts the
machine-readable result on stdout and everything else on stderr.
"""

from __future__ import annotations

import gc
import signal
import sys
from typing import Annotated

import typer

from snapvit_cli._version import __version__
from snapvit_cli.cli import eval as eval_command
from snapvit_cli.cli import export as export_command
from snapvit_cli.cli import import_scores, info, models, push, score
from snapvit_cli.cli import profile as profile_command
from snapvit_cli.cli import slice as slice_command
from snapvit_cli.cli._help import SnapvitCommand, SnapvitGroup
from snapvit_cli.cli._output import launched, report, say, stopped_by_launcher
from snapvit_cli.errors import SnapvitError

app = typer.Typer(
    name="snapvit",
    help="Elastic Vision Transformers from pretrained models without retraining (SnapViT): "
    "score once, slice to any budget.",
    cls=SnapvitGroup,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode="rich",
    pretty_exceptions_show_locals=False,
)


def _version_callback(value: bool) -> None:
    if value:
        say(f"snapvit {__version__}", markup=False)
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", "-V", callback=_version_callback, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Elastic ViTs: `snapvit score` once, then `snapvit slice` to any budget."""


app.command("score", cls=SnapvitCommand, epilog=score.EPILOG)(score.score)
app.command("slice", cls=SnapvitCommand, epilog=slice_command.EPILOG)(slice_command.slice_)
app.command("import-scores", cls=SnapvitCommand, epilog=import_scores.EPILOG)(import_scores.import_scores)
app.command("push", cls=SnapvitCommand, epilog=push.EPILOG)(push.push)
app.command("eval", cls=SnapvitCommand, epilog=eval_command.EPILOG)(eval_command.eval_)
app.command("export", cls=SnapvitCommand, epilog=export_command.EPILOG)(export_command.export)
app.command("models", cls=SnapvitCommand, epilog=models.EPILOG)(models.models)
app.command("info", cls=SnapvitCommand, epilog=info.EPILOG)(info.info)
app.command("profile", cls=SnapvitCommand, epilog=profile_command.EPILOG)(profile_command.profile)


def main() -> None:
    """Console-script entry point."""
    try:
        if launched():  # by torchrun (see snapvit_cli.scoring.distributed)
            signal.signal(signal.SIGTERM, stopped_by_launcher)
        app()
    except SnapvitError as exc:  # the launcher's SIGTERM outside a command, or its environment unreadable
        report(exc)
        sys.exit(exc.exit_code)
    finally:
        # torch, timm and torchvision leave millions of objects that the interpreter's shutdown collections would
        # traverse: freezing them first (nothing needs collecting at exit) saves about 0.8 s of CPU per command.
        gc.freeze()
