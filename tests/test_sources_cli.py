"""``dicom-node sources list|poll-now`` against a real Orthanc, beside a running node and on its own."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dicom_node.cli import main
from dicom_node.node import Node
from tests.conftest import database_toml, dicom_node_exe, wait_for
from tests.test_sources_poller import NAME, load, orthanc_available, series


def write_config(path: Path, root: Path, url: str, auth: str = "") -> Path:
    """A TOML config with the storage root, a dicomweb poller and a disabled one."""
    path.write_text(f"""
[scp]
port = 0
[api]
enabled = false
[storage]
root = "{root}"
min_free_bytes = 0
{database_toml(root)}[assembly]
quiet_period = 0.5
poll_interval = 0.1

[[sources.pollers]]
name = "{NAME}"
kind = "dicomweb"
url = "{url}"
interval = 3600.0
page_size = 10
study_date_days = 2
{auth}

[[sources.pollers]]
name = "off"
kind = "dicomweb"
url = "{url}"
enabled = false
""", encoding="utf-8")
    return path


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """Run the CLI in this process; returns (exit code, stdout)."""
    code = main(list(args))
    return code, capsys.readouterr().out


def cli_process(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI in another process (as an operator beside a running service would)."""
    return subprocess.run([dicom_node_exe(), "--config", str(config), *args], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ), cwd=config.parent)


def listed(config: Path) -> dict[str, dict[str, Any]]:
    out = cli_process(config, "sources", "list", "--json")
    assert out.returncode == 0, out.stderr
    return {row["name"]: row for row in map(json.loads, out.stdout.splitlines())}


@pytest.fixture
def orthanc(tmp_path: Path) -> Any:
    orthanc_available()
    from tests.peers.orthanc import run_orthanc

    with run_orthanc(tmp_path / "orthanc") as peer:
        yield peer


def test_list_without_pollers_and_poll_now_of_an_unknown_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "node.toml"
    config.write_text(f'[storage]\nroot = "{tmp_path / "state"}"\nmin_free_bytes = 0\n', encoding="utf-8")
    assert cli(capsys, "--config", str(config), "sources", "list") == (0, "no pollers configured ([[sources.pollers]])\n")
    code, out = cli(capsys, "--config", str(config), "sources", "poll-now", "nope")
    assert code == 1 and "no poller 'nope'" in out


def test_list_before_anything_was_stored_shows_configured_pollers_without_creating_the_root(tmp_path: Path) -> None:
    """A read-only command: the pollers are idle, and no storage root appears."""
    root = tmp_path / "not-yet"
    config = write_config(tmp_path / "node.toml", root, "http://127.0.0.1:9/dicom-web")
    rows = listed(config)
    assert (rows[NAME]["state"], rows[NAME]["polls"], rows["off"]["state"]) == ("idle", 0, "disabled")
    assert not root.exists()


def test_poll_now_beside_a_running_node_and_list_from_another_process(
        start_node: Callable[..., Node], orthanc: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = series("cli1", 3)
    load(orthanc, first)
    root = tmp_path / "node"
    config = write_config(tmp_path / "node.toml", root, orthanc.dicomweb_url)
    from dicom_node.config import load_config

    node = start_node(root, **{k: v for k, v in load_config(config).model_dump(mode="json").items()
                               if k in ("sources",)}, api={"enabled": False})
    assert wait_for(lambda: node.pollers.status().get(NAME, {}).get("polls", 0) >= 1, timeout=20)
    assert node.index.counts()["instances"] == 3

    # A new study; the service would wait an hour, poll-now (another process) fetches it now.
    second = series("cli2", 4)
    load(orthanc, second)
    polled = cli_process(config, "sources", "poll-now", NAME)
    assert polled.returncode == 0, polled.stdout + polled.stderr
    assert f"series {second[0].SeriesInstanceUID}: 4 stored, 0 already here, 0 refused" in polled.stdout
    assert "2 studies examined, 4 instances stored" in polled.stdout
    assert node.index.counts()["instances"] == 7
    assert wait_for(lambda: node.index.counts()["complete"] == 2, timeout=10)

    rows = listed(config)
    assert rows[NAME]["state"] == "idle" and rows[NAME]["retrieved"] == 7 and rows[NAME]["seen"] == 7
    assert rows[NAME]["polls"] == 2 and rows[NAME]["last_retrieved"] == 4
    assert rows["off"]["state"] == "disabled" and rows["off"]["enabled"] is False
    text = cli_process(config, "sources", "list").stdout
    assert NAME in text and "idle" in text and "disabled" in text

    # Nothing new: poll-now in this process retrieves nothing.
    code, out = cli(capsys, "--config", str(config), "sources", "poll-now", NAME)
    assert code == 0 and "0 instances stored" in out and "stored," not in out


def test_wrong_password_stops_the_source_until_fixed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    orthanc_available()
    from tests.peers.orthanc import run_orthanc

    secret = tmp_path / "password"
    secret.write_text("wrong\n", encoding="utf-8")
    with run_orthanc(tmp_path / "orthanc", users={"bob": "right"}) as peer:
        load(peer, series("cliauth", 2))
        auth = f'auth = {{ type = "basic", username = "bob", password_file = "{secret}" }}'
        config = write_config(tmp_path / "node.toml", tmp_path / "node", peer.dicomweb_url, auth)
        code, out = cli(capsys, "--config", str(config), "sources", "poll-now", NAME)
        assert code == 1 and "failed (stopped)" in out and "HTTP 401" in out and "check the credentials" in out
        row = listed(config)[NAME]
        assert row["state"] == "stopped" and "HTTP 401" in row["reason"]
        assert "stopped" in cli_process(config, "sources", "list").stdout

        # The password file is fixed (read at each request): poll-now succeeds and clears the stop.
        secret.write_text("right\n", encoding="utf-8")
        code, out = cli(capsys, "--config", str(config), "sources", "poll-now", NAME)
        assert code == 0 and "2 instances stored" in out
        row = listed(config)[NAME]
        assert row["state"] == "idle" and row["reason"] is None and row["seen"] == 2
