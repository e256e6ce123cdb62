"""Where command output goes: the one place the CLI talks to the terminal."""

from __future__ import annotations

import sys
from typing import TextIO


def echo(*values: object, file: TextIO | None = None, sep: str = " ", end: str = "\n") -> None:
    """Write command output (stdout by default)."""
    stream = file if file is not None else sys.stdout
    stream.write(sep.join(str(v) for v in values) + end)
    stream.flush()
