"""The ``dicom-node`` command line: help, status, and config discovery from the working directory."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from dicom_node.cli import build_parser
from dicom_node.synthetic import SeriesSpec, ct_datasets
from tests.conftest import dicom_node_exe, free_port, require_tool, wait_for, wait_port
from tests.scu import send_all


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([dicom_node_exe(), *args], cwd=cwd, env=dict(os.environ, **(env or {})),
                          capture_output=True, text=True, timeout=60)


def test_help_for_every_subcommand(tmp_path: Path) -> None:
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert {"serve", "status"} <= set(commands)
    for name in commands:
        out = run_cli(name, "--help", cwd=tmp_path)
        assert out.returncode == 0 and "usage: dicom-node " + name in out.stdout, out.stderr


def test_status_json_and_text(tmp_path: Path) -> None:
    env = {"DICOM_NODE__STORAGE__ROOT": str(tmp_path / "state")}
    out = run_cli("status", "--json", cwd=tmp_path, env=env)
    assert out.returncode == 0
    assert json.loads(out.stdout) == {"studies": 0, "series": 0, "instances": 0, "pending": 0, "complete": 0}
    text = run_cli("status", cwd=tmp_path, env=env).stdout
    assert "instances:" in text and "pending:" in text


def test_serve_reads_conf_node_toml_from_working_directory(tmp_path: Path) -> None:
    echoscu = require_tool("echoscu", "apt-get install dcmtk")
    port = free_port()
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "node.toml").write_text(
        f'[scp]\nae_title = "FROM_CONF"\nport = {port}\n[storage]\nroot = "./state"\nmin_free_bytes = 0\n'
        '[assembly]\nquiet_period = 0.3\npoll_interval = 0.1\n'
    )
    proc = subprocess.Popen([dicom_node_exe(), "serve"], cwd=tmp_path, stderr=subprocess.PIPE)
    try:
        wait_port(port)
        out = subprocess.run([echoscu, "-aec", "FROM_CONF", "127.0.0.1", str(port)], capture_output=True)
        assert out.returncode == 0, out.stderr
        statuses = send_all(port, ct_datasets(SeriesSpec(slices=2, rows=16, columns=16, seed="cli")), called="FROM_CONF")
        assert statuses == [0, 0]
        assert wait_for(lambda: json.loads(run_cli("status", "--json", cwd=tmp_path).stdout)["complete"] == 1)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert (tmp_path / "state" / "index.sqlite3").is_file()
    log = err.decode()
    assert "level=INFO" in log and "SCP listening" in log and "Traceback" not in log
