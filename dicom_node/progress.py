"""Progress bars for long CLI work: on a terminal only, never in a pipe or a log.

Progress goes to stderr so stdout (tables, JSON) stays byte-for-byte what a
script parses, and only when stderr is a TTY: a piped or captured run (CI, cron,
``2>log``) gets no carriage returns. The bars are tqdm's; this module fixes the
stream and the on/off rule in one place for the commands and the bench scripts.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from types import TracebackType
from typing import Protocol, Self, TypeVar

# tqdm ships no type information (types-tqdm is not a dependency); the Protocol
# below is the part of its interface the callers use.
from tqdm import tqdm  # type: ignore[import-untyped]

T = TypeVar("T")


class ProgressBar(Protocol):
    """The part of a manual tqdm bar callers use."""

    def update(self, n: float = 1) -> bool | None:
        """Advance by ``n`` units."""

    def set_description_str(self, desc: str | None = None, refresh: bool = True) -> None:
        """Replace the description (the current step)."""

    def close(self) -> None:
        """Finish the bar."""

    def __enter__(self) -> Self:
        """Return the bar."""

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        """Close the bar."""


def enabled() -> bool:
    """Return True when progress should be drawn: stderr is an interactive terminal."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


def bar(total: float | None = None, *, desc: str, unit: str = "it", leave: bool = False) -> ProgressBar:
    """Return a manual tqdm bar (call ``update``) on stderr, disabled unless stderr is a TTY.

    Parameters
    ----------
    total : float, optional
        Expected number of units; ``None`` shows a count without a bar.
    desc : str
        What is being done (no patient data: it is drawn on the terminal).
    unit : str
        Name of one unit (``"instance"``, ``"slice"``, ``"model"``).
    leave : bool
        Keep the finished bar on screen.
    """
    made: ProgressBar = tqdm(total=total, desc=desc, unit=unit, leave=leave, file=sys.stderr,
                             disable=not enabled(), dynamic_ncols=True)
    return made


def track(iterable: Iterable[T], *, desc: str, total: float | None = None, unit: str = "it",
          leave: bool = False) -> Iterable[T]:
    """Wrap ``iterable`` in a tqdm bar on stderr, disabled unless stderr is a TTY (see :func:`bar`)."""
    wrapped: Iterable[T] = tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, file=sys.stderr,
                                disable=not enabled(), dynamic_ncols=True)
    return wrapped
