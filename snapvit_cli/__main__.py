"""``python -m snapvit_cli``: the ``snapvit`` command without the installed entry point (benchmarks, CI)."""

from snapvit_cli.cli import main

main()
