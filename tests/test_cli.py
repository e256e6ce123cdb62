"""The ``dicom-node`` command line: help, status, global options, and which config and storage it uses."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from dicom_node.cli import build_parser, main
from dicom_node.index import Index
from dicom_node.synthetic import SeriesSpec, ct_datasets
from tests.conftest import dicom_node_exe, free_port, require_tool, wait_for, wait_port
from tests.scu import send_all


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([dicom_node_exe(), *args], cwd=cwd, env=dict(os.environ, **(env or {})),
                          capture_output=True, text=True, timeout=60)


def test_help_for_every_subcommand(tmp_path: Path) -> None:
    parser = build_parser()
    choices = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert isinstance(choices, dict)
    commands = list(choices)
    assert {"serve", "status", "results"} <= set(commands)
    for name in commands:
        out = run_cli(name, "--help", cwd=tmp_path)
        assert out.returncode == 0 and "usage: dicom-node " + name in out.stdout, out.stderr


def test_status_json_and_text(tmp_path: Path) -> None:
    Index(tmp_path / "state" / "index.sqlite3")  # an empty node's index, as serve creates it
    env = {"DICOM_NODE__STORAGE__ROOT": str(tmp_path / "state")}
    out = run_cli("status", "--json", cwd=tmp_path, env=env)
    assert out.returncode == 0
    assert json.loads(out.stdout) == {"studies": 0, "series": 0, "instances": 0, "pending": 0, "complete": 0}
    text = run_cli("status", cwd=tmp_path, env=env).stdout
    assert "instances:" in text and "pending:" in text


def test_config_option_before_and_after_the_subcommand() -> None:
    """``--config`` is a global option: accepted in either place, at any depth; the later one wins."""
    parser = build_parser()
    assert parser.parse_args(["status"]).config is None
    assert parser.parse_args(["--config", "a.toml", "status"]).config == Path("a.toml")
    assert parser.parse_args(["status", "--config", "b.toml"]).config == Path("b.toml")
    assert parser.parse_args(["--config", "a.toml", "status", "--config", "b.toml"]).config == Path("b.toml")
    assert parser.parse_args(["jobs", "list", "--config", "c.toml"]).config == Path("c.toml")
    assert parser.parse_args(["--config", "a.toml", "models", "list"]).config == Path("a.toml")


def test_config_after_the_subcommand_is_the_one_used(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[storage]\nroot = "state"\n', encoding="utf-8")
    Index(tmp_path / "state" / "index.sqlite3")
    assert main(["status", "--json", "--config", str(good)]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["instances"] == 0
    assert f"config {good}, storage {tmp_path / 'state'}" in captured.err
    # Given twice, the later (after the subcommand) wins: the missing file named first is never read.
    assert main(["--config", str(tmp_path / "missing.toml"), "status", "--config", str(good)]) == 0
    capsys.readouterr()
    assert main(["--config", str(good), "status", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "missing.toml does not exist" in capsys.readouterr().err


def test_commands_name_config_and_storage_on_stderr_from_any_folder(tmp_path: Path) -> None:
    """A relative config from another folder: same node, one stderr line naming it, clean JSON on stdout."""
    (tmp_path / "site" / "conf").mkdir(parents=True)
    config = tmp_path / "site" / "conf" / "node.toml"
    config.write_text('[storage]\nroot = "../var"\n[inference]\nmodels_dir = "../models"\n', encoding="utf-8")
    Index(tmp_path / "site" / "var" / "index.sqlite3")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = run_cli("status", "--json", "--config", "../site/conf/node.toml", cwd=elsewhere)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["studies"] == 0
    assert out.stderr.splitlines() == [
        f"dicom-node: config {config}, storage {tmp_path / 'site' / 'var'}, models {tmp_path / 'site' / 'models'}"]
    models = run_cli("models", "list", "--json", "--config", "../site/conf/node.toml", cwd=elsewhere)
    assert models.returncode == 0 and json.loads(models.stdout)["models"] == []
    assert f"storage {tmp_path / 'site' / 'var'}," in models.stderr
    assert sorted(p.name for p in elsewhere.iterdir()) == []


@pytest.mark.parametrize("command", [["status"], ["status", "--json"], ["jobs", "list"], ["jobs", "show", "x"],
                                     ["results", "list"], ["results", "list", "--json"]])
def test_read_only_commands_never_create_a_storage_root(tmp_path: Path, command: list[str]) -> None:
    """Run from a folder without conf/: say there is no node state here instead of creating ./var."""
    out = run_cli(*command, cwd=tmp_path)
    assert out.returncode == 1 and out.stdout == ""
    first, second = out.stderr.splitlines()
    assert first == (f"dicom-node: config built-in defaults (no conf/node.toml in {tmp_path}), "
                     f"storage {tmp_path / 'var'} (does not exist yet), models {tmp_path / 'engines'}")
    assert second.startswith(f"dicom-node: no node state at {tmp_path / 'var'} (no index.sqlite3)")
    assert not (tmp_path / "var").exists()


def test_models_list_from_another_folder_says_which_models_dir(tmp_path: Path) -> None:
    out = run_cli("models", "list", cwd=tmp_path)
    assert out.returncode == 0
    assert f"models {tmp_path / 'engines'}" in out.stderr
    assert not (tmp_path / "var").exists()


def test_serve_reads_conf_node_toml_from_working_directory(tmp_path: Path) -> None:
    echoscu = require_tool("echoscu", "apt-get install dcmtk")
    port = free_port()
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "node.toml").write_text(
        f'[scp]\nae_title = "FROM_CONF"\nport = {port}\n[storage]\nroot = "../state"\nmin_free_bytes = 0\n'
        '[assembly]\nquiet_period = 0.3\npoll_interval = 0.1\n'
        '[api]\nport = 0\n'  # an ephemeral port: 8080 may be taken by another node on this machine
    )
    proc = subprocess.Popen([dicom_node_exe(), "serve"], cwd=tmp_path, stderr=subprocess.PIPE)
    try:
        wait_port(port)
        out = subprocess.run([echoscu, "-aec", "FROM_CONF", "127.0.0.1", str(port)], capture_output=True)
        assert out.returncode == 0, out.stderr
        statuses = send_all(port, ct_datasets(SeriesSpec(slices=2, rows=16, columns=16, seed="cli")), called="FROM_CONF")
        assert statuses == [0, 0]
        assert wait_for(lambda: json.loads(run_cli("status", "--json", cwd=tmp_path).stdout)["complete"] == 1)
        # The same node from another folder, naming the config after the subcommand.
        other = run_cli("status", "--json", "--config", str(tmp_path / "conf" / "node.toml"), cwd=tmp_path / "conf")
        assert json.loads(other.stdout)["complete"] == 1, other.stderr
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert (tmp_path / "state" / "index.sqlite3").is_file()  # "../state" is relative to conf/, not to the cwd
    log = err.decode()
    assert "level=INFO" in log and "SCP listening" in log and "Traceback" not in log
