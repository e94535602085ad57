"""``python tests/_paused.py ARGS...`` is ``snapvit ARGS...`` with the write-pause test hook of
:mod:`snapvit_cli.fileio` switched on (``SNAPVIT_TEST_PAUSE=POINT:MARKER``). The hook is off in every other process,
so only the test suite can make snapvit wait at a write step."""

from __future__ import annotations

import sys

from snapvit_cli import fileio
from snapvit_cli.cli import main

if __name__ == "__main__":
    fileio.pause_hook_enabled = True
    sys.argv[0] = "snapvit"
    main()
