"""One bash process that runs README blocks in order, as a user at one terminal would.

Background jobs (``make run &``, ``storescp ... &``) stay in that shell, so a
later block can stop them with ``kill %1`` exactly as the README says. The shell
is started in its own session without job control, so every process it starts
shares its process group, and :meth:`Shell.close` stops them all with one
signal to that group (never by name).

Each block is written to a file and ``source``d with stdin from ``/dev/null``
(a command that reads stdin must not swallow the next block) and its output
into a file of its own. An ``ERR`` trap
reports every failing command with its line; ``wait`` is exempt, because
waiting for a node the README just stopped returns the signal's status.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

_DONE = "__README_DONE__"
_ERR = "__README_ERR__"
_TRAP = (
    "trap 'rc=$?; case \"$BASH_COMMAND\" in wait*) ;; "
    f"*) echo \"{_ERR} line=$LINENO rc=$rc cmd=$BASH_COMMAND\" ;; esac' ERR\n"
)


class BlockFailed(AssertionError):
    """A README block failed; the message names the command and carries its output."""


class Shell:
    """A persistent bash in ``cwd`` whose stdout and stderr go to ``log``."""

    def __init__(self, cwd: Path, env: dict[str, str], log: Path) -> None:
        self.cwd = cwd
        self.log = log
        self._scripts = cwd / ".readme-blocks"
        self._scripts.mkdir()
        self._count = 0
        self._out = log.open("wb")
        self.proc = subprocess.Popen(["bash", "--norc", "--noprofile"], cwd=cwd, env=env, stdin=subprocess.PIPE,
                                     stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True)
        self._send(_TRAP)

    def _send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def transcript(self) -> str:
        """Everything printed so far: the shell's own output, then each block's (with its background jobs')."""
        parts = [self.log.read_bytes()] + [p.read_bytes() for p in sorted(self._scripts.glob("*.out"))]
        return b"\n".join(parts).decode("utf-8", "replace")

    def run(self, script: str, timeout: float) -> tuple[str, list[tuple[int, str]]]:
        """Source ``script`` in the shell and wait for it to finish.

        Its output (and that of jobs it puts in the background) goes to a file
        of its own, so another block's background jobs never mix into it.

        Returns
        -------
        (output, errors)
            What it printed, and one ``(N, "rc=R cmd=...")`` per failing command
            (N counts from 1 within ``script``).
        """
        self._count += 1
        path = self._scripts / f"{self._count:02d}.sh"
        out_path = path.with_suffix(".out")
        path.write_text(script)
        start = self.log.stat().st_size
        marker = f"{_DONE} {self._count}"
        self._send(f"source {path} </dev/null >{out_path} 2>&1\nprintf '\\n{marker}\\n'\n")
        deadline = time.monotonic() + timeout
        while marker not in self.log.read_bytes()[start:].decode("utf-8", "replace"):
            if self.proc.poll() is not None:
                raise BlockFailed(f"the shell exited (status {self.proc.returncode}) while running it\n{self._read(out_path)}")
            if time.monotonic() > deadline:
                raise BlockFailed(f"still running after {timeout:.0f} s\n{self._read(out_path)}")
            time.sleep(0.1)
        out = self._read(out_path)
        errors: list[tuple[int, str]] = []
        for line in out.splitlines():
            match = re.search(rf"{_ERR} line=(\d+) (rc=\d+ cmd=.*)", line)
            if match:
                errors.append((int(match.group(1)), match.group(2)))
        clean = "\n".join(line for line in out.splitlines() if _ERR not in line)
        return clean, errors

    @staticmethod
    def _read(path: Path) -> str:
        return path.read_bytes().decode("utf-8", "replace") if path.exists() else ""

    def close(self) -> None:
        """Stop the shell and everything it started (one process group), then close the log."""
        try:
            pgid = os.getpgid(self.proc.pid)
        except ProcessLookupError:
            pgid = None
        if pgid is not None:
            for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(pgid, sig)
                except ProcessLookupError:
                    break
                deadline = time.monotonic() + grace
                while time.monotonic() < deadline and _group_alive(pgid):
                    self.proc.poll()  # reap the shell itself, or its zombie keeps the group "alive"
                    time.sleep(0.1)
                if not _group_alive(pgid):
                    break
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=5)
        self._out.close()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
