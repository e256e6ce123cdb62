"""The fenced code blocks of a Markdown file, and how ``tests/test_readme.py`` treats each one.

A block is *executed* (``sh``, ``console``), *validated* (``toml`` through the
config loader, ``json`` by parsing) or *skipped* because the line before it says
``<!-- not executed: REASON -->``. Any other block is an error: an example that
nothing checks would rot unnoticed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Treatment = Literal["execute", "validate", "skip"]

EXECUTED = frozenset({"sh", "console"})
VALIDATED = frozenset({"toml", "json"})

_FENCE = re.compile(r"^(?P<fence>`{3,})(?P<lang>[\w+-]*)\s*$")
_SKIP = re.compile(r"^<!--\s*not executed:\s*(?P<reason>.*?)\s*-->$")
_HEADING = re.compile(r"^(#{1,6})\s+(?P<title>.+?)\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced block: its language, where it starts, what it says, and what precedes it."""

    lang: str
    line: int  #: 1-based line of the opening fence
    text: str
    section: str
    skip_reason: str | None
    source: str = "README.md"  #: the document, relative to the repository root

    @property
    def where(self) -> str:
        """``README.md:LINE (```lang in "Section")``, for failure messages."""
        return f"{self.source}:{self.line} (```{self.lang or '(no language)'} block in section {self.section!r})"

    @property
    def treatment(self) -> Treatment | None:
        """How the test handles this block; None when nothing would check it."""
        if self.skip_reason:
            return "skip"
        if self.lang in EXECUTED:
            return "execute"
        if self.lang in VALIDATED:
            return "validate"
        return None


def parse_blocks(markdown: str, source: str = "README.md") -> list[Block]:
    """Return every fenced block of ``markdown`` in order.

    A heading inside a block (a shell comment) is not a section title, so fences
    are tracked before headings.
    """
    blocks: list[Block] = []
    lines = markdown.splitlines()
    section = "(top)"
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if match is None:
            heading = _HEADING.match(lines[i])
            if heading:
                section = heading.group("title")
            i += 1
            continue
        start, fence = i, match.group("fence")
        body: list[str] = []
        i += 1
        while i < len(lines) and not lines[i].startswith(fence):
            body.append(lines[i])
            i += 1
        previous = next((lines[j].strip() for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        skip = _SKIP.match(previous)
        blocks.append(Block(lang=match.group("lang"), line=start + 1, text="\n".join(body) + "\n", section=section,
                            skip_reason=skip.group("reason") if skip else None, source=source))
        i += 1
    return blocks


@dataclass(frozen=True)
class ConsoleStep:
    """One ``$ command`` of a console block and the output the README shows for it."""

    command: str
    expected: str
    offset: int  #: line of the ``$`` within the block (0-based)


def console_steps(text: str) -> list[ConsoleStep]:
    """Split a console block into commands (``$ ``, continued by a trailing backslash) and shown output."""
    steps: list[ConsoleStep] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].startswith("$ "):
            raise ValueError(f"console block line {i + 1} is output with no command before it: {lines[i]!r}")
        offset, command = i, [lines[i][2:]]
        while command[-1].endswith("\\") and i + 1 < len(lines):
            i += 1
            command.append(lines[i])
        i += 1
        output: list[str] = []
        while i < len(lines) and not lines[i].startswith("$ "):
            output.append(lines[i])
            i += 1
        steps.append(ConsoleStep("\n".join(command), "\n".join(output), offset))
    return steps


def output_matches(expected: str, actual: str) -> bool:
    """True when ``actual`` is ``expected`` with each ``...`` standing for any text (outer whitespace ignored)."""
    pattern = ".*?".join(re.escape(part) for part in expected.strip().split("..."))
    return re.fullmatch(pattern, actual.strip(), flags=re.DOTALL) is not None


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")
