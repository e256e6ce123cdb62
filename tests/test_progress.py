"""Progress bars: drawn on stderr when it is a terminal, absent when piped; stdout unchanged either way.

The commands run as users run them, in a subprocess: once with stderr piped
(as CI, cron and ``2>file`` do) and once with stderr on a pseudo-terminal.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import pty
import select
import struct
import subprocess
import sys
import termios
from dataclasses import dataclass
from pathlib import Path

import pytest

from dicom_node.synthetic import SeriesSpec, write_ct_series
from tests.conftest import dicom_node_exe

ROOT = Path(__file__).resolve().parents[1]
#: What a tqdm bar leaves in a stream: carriage returns and its rate/percent fields.
TQDM_MARKS = ("\r", "%|", "/s]", "s/step", "step/s")


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


def run_piped(argv: list[str], cwd: Path, timeout: float = 180) -> Run:
    """Run with stdout and stderr both pipes (not terminals)."""
    out = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False,
                         stdin=subprocess.DEVNULL)
    return Run(out.returncode, out.stdout, out.stderr)


def run_on_terminal(argv: list[str], cwd: Path, timeout: float = 180) -> Run:
    """Run with stderr on a pseudo-terminal (80 columns) and stdout on a pipe; returns what each received."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    chunks: list[bytes] = []
    try:
        while True:
            ready, _, _ = select.select([master], [], [], timeout)
            if not ready:
                proc.kill()
                raise TimeoutError(f"{argv[1:3]} produced nothing on the terminal for {timeout} s")
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every writer to the terminal has exited
                break
            if not data:
                break
            chunks.append(data)
        assert proc.stdout is not None
        stdout = proc.stdout.read().decode()
        proc.wait(timeout)
    finally:
        os.close(master)
        if proc.stdout is not None:
            proc.stdout.close()
    return Run(proc.returncode, stdout, b"".join(chunks).decode(errors="replace"))


def _no_progress(stderr: str) -> None:
    assert not any(mark in stderr for mark in TQDM_MARKS), f"progress output in a piped stderr: {stderr!r}"


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("series")
    write_ct_series(folder, SeriesSpec(slices=6, rows=48, columns=48, seed="progress"))
    return folder


@pytest.fixture
def config(tmp_path: Path) -> Path:
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'[inference]\nmodels_dir = "{ROOT / "engines"}"\nbackends = ["onnxruntime"]\n'
                   f'[pixels]\ndecode_workers = 1\n[storage]\nroot = "{tmp_path / "state"}"\n')
    return cfg


def _infer(config: Path, series: Path, out: Path) -> list[str]:
    return [dicom_node_exe(), "--config", str(config), "infer", "--model", "ct-body", str(series), "--out", str(out)]


def test_infer_piped_prints_no_progress(config: Path, series: Path, tmp_path: Path) -> None:
    done = run_piped(_infer(config, series, tmp_path / "out"), tmp_path)
    assert done.returncode == 0, done.stderr
    _no_progress(done.stderr)
    assert "decode" not in done.stderr
    assert json.loads(done.stdout)["result"] == "result.npy"


def test_infer_on_a_terminal_shows_steps_and_keeps_stdout(config: Path, series: Path, tmp_path: Path) -> None:
    piped = run_piped(_infer(config, series, tmp_path / "piped"), tmp_path)
    shown = run_on_terminal(_infer(config, series, tmp_path / "tty"), tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "\r" in shown.stderr and "decode 6 files" in shown.stderr and "step" in shown.stderr
    assert json.loads(shown.stdout) == json.loads(piped.stdout), "stdout is the same on a terminal"


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt installed: a build would run")
def test_models_build_progress_only_on_a_terminal(config: Path, tmp_path: Path) -> None:
    argv = [dicom_node_exe(), "--config", str(config), "models", "build", "ct-body", "ct-lungs"]
    piped = run_piped(argv, tmp_path)
    assert piped.returncode == 1 and piped.stdout == ""
    _no_progress(piped.stderr)
    assert "cannot build a TensorRT engine" in piped.stderr
    shown = run_on_terminal(argv, tmp_path)
    assert shown.returncode == 1
    assert "build TensorRT engine ct-body" in shown.stderr and "0/2" in shown.stderr
    assert "cannot build a TensorRT engine" in shown.stderr


def test_bench_script_progress_only_on_a_terminal(tmp_path: Path) -> None:
    """A bench script prints its table on stdout either way; the bar only on a terminal."""
    argv = [sys.executable, str(ROOT / "bench" / "decode.py"), "--slices", "2", "--repeat", "1"]
    piped = run_piped(argv, ROOT, timeout=300)
    assert piped.returncode == 0, piped.stderr
    _no_progress(piped.stderr)
    shown = run_on_terminal(argv, ROOT, timeout=300)
    assert shown.returncode == 0, shown.stderr
    assert "\r" in shown.stderr and "decode" in shown.stderr
    table = [line for line in piped.stdout.splitlines() if line.startswith("|")]
    assert table and len(table) == len([line for line in shown.stdout.splitlines() if line.startswith("|")])
