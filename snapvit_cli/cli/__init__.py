"""The ``snapvit`` command line; one module per command."""

from snapvit_cli.cli.app import app, main

__all__ = ["app", "main"]
