"""Run Python code in a subprocess where some packages cannot be imported, as on a machine without them."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

_BLOCKER = """\
import sys

class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError(f"{{name}} is not installed here")
        return None

sys.meta_path.insert(0, _Blocked())
for _name in {blocked!r}:
    try:
        __import__(_name)
    except ImportError:
        pass
    else:
        raise SystemExit(f"{{_name}} is still importable")
"""


def run_without(blocked: set[str], code: str, cwd: Path, timeout: float = 300) -> str:
    """Run ``code`` in a fresh interpreter in which importing any of ``blocked`` fails; return its stdout."""
    script = _BLOCKER.format(blocked=sorted(blocked)) + "\n" + textwrap.dedent(code)
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HOME": str(cwd)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout
