"""Config: defaults, TOML, environment overrides and one-line errors naming the key."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from dicom_node.config import load_config
from dicom_node.config.delivery import DimseDestination, StowDestination
from dicom_node.errors import ConfigError
from dicom_node.net.auth import BasicAuth, BearerAuth
from tests.conftest import dicom_node_exe


def test_defaults_are_the_embedded_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no conf/node.toml here: the built-in defaults apply
    cfg = load_config(None, {})
    assert cfg.scp.ae_title == "DICOM_NODE"
    assert cfg.scp.port == 11112
    assert cfg.scp.host == "127.0.0.1"
    assert cfg.storage.root == Path("./var")
    assert cfg.assembly.quiet_period == 10.0
    assert "1.2.840.10008.1.2.4.90" in cfg.scp.transfer_syntaxes


def test_shipped_node_toml_is_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checkout = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(tmp_path)  # the answer must not depend on the working directory
    cfg = load_config(checkout / "conf" / "node.toml", {})
    assert cfg.scp.port == 11112 and cfg.scp.ae_title == "DICOM_NODE"
    # The state stays where `make run` always kept it (the checkout's var/), not conf/var.
    assert cfg.storage.root.resolve() == checkout / "var"
    assert cfg.inference.models_dir.resolve() == checkout / "engines"
    assert (cfg.inference.models_dir / "ct-body" / "model.toml").is_file()


_PATHS_TOML = """
[storage]
root = "state"
[inference]
models_dir = "../models"
[api]
webhook_secret_file = "secrets/webhook.key"
jwks_file = "/etc/dicom-node/jwks.json"
[[delivery.destinations]]
kind = "stowrs"
name = "archive"
url = "https://pacs.example.org/dicom-web"
ca_file = "tls/ca.pem"
auth = { type = "bearer", token_file = "secrets/token" }
[[delivery.destinations]]
kind = "dimse"
name = "pacs"
ae_title = "PACS"
host = "10.0.0.5"
port = 104
ca_file = "tls/ca.pem"
cert_file = "tls/node.pem"
key_file = "tls/node.key"
[[sources.remotes]]
name = "qr"
ae_title = "QR"
host = "10.0.0.6"
port = 104
cert_file = "tls/qr.pem"
key_file = "tls/qr.key"
[[sources.pollers]]
name = "web"
kind = "dicomweb"
url = "https://pacs.example.org/dicom-web"
ca_file = "tls/web-ca.pem"
auth = { type = "basic", username = "node", password_file = "secrets/password" }
"""


def test_relative_paths_in_a_file_resolve_against_its_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every path-valued key read from a file means the same from any working directory."""
    folder = tmp_path / "etc" / "node"
    folder.mkdir(parents=True)
    (folder / "node.toml").write_text(_PATHS_TOML, encoding="utf-8")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(Path("../etc/node/node.toml"), {})
    assert cfg.storage.root.resolve() == folder / "state"
    assert cfg.inference.models_dir.resolve() == tmp_path / "etc" / "models"
    assert cfg.api.webhook_secret_file == folder / "secrets" / "webhook.key"
    assert cfg.api.jwks_file == Path("/etc/dicom-node/jwks.json")  # absolute paths are kept
    stow, dimse = cfg.delivery.destinations
    assert isinstance(stow, StowDestination) and isinstance(stow.auth, BearerAuth)
    assert stow.ca_file == folder / "tls" / "ca.pem"
    assert stow.auth.token_file == folder / "secrets" / "token"
    assert isinstance(dimse, DimseDestination)
    assert (dimse.ca_file, dimse.cert_file, dimse.key_file) == (
        folder / "tls" / "ca.pem", folder / "tls" / "node.pem", folder / "tls" / "node.key")
    remote = cfg.sources.remotes[0]
    assert (remote.cert_file, remote.key_file) == (folder / "tls" / "qr.pem", folder / "tls" / "qr.key")
    poller = cfg.sources.pollers[0]
    assert poller.ca_file == folder / "tls" / "web-ca.pem"
    assert isinstance(poller.auth, BasicAuth)
    assert poller.auth.password_file == folder / "secrets" / "password"
    assert not (elsewhere / "state").exists()


def test_environment_and_default_paths_stay_relative_to_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "conf").mkdir()
    toml = tmp_path / "conf" / "node.toml"
    toml.write_text('[storage]\nroot = "state"\n[api]\nwebhook_secret_file = "key"\n', encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(toml, {"DICOM_NODE__STORAGE__ROOT": "from-env", "DICOM_NODE__API__WEBHOOK_SECRET_FILE": "k2"})
    assert cfg.storage.root == Path("from-env") and cfg.api.webhook_secret_file == Path("k2")
    assert cfg.inference.models_dir == Path("./engines")  # built-in default, not rebased
    # Found implicitly as conf/node.toml: still relative to the file, i.e. conf/state.
    assert load_config(None, {}).storage.root.resolve() == tmp_path / "conf" / "state"


def test_toml_then_environment_override(tmp_path: Path) -> None:
    toml = tmp_path / "node.toml"
    toml.write_text('[scp]\nport = 2000\nae_title = "FROM_TOML"\n[storage]\nroot = "/srv/a"\n')
    env = {"DICOM_NODE__SCP__PORT": "11113", "DICOM_NODE__STORAGE__ROOT": "/data/node"}
    cfg = load_config(toml, env)
    assert cfg.scp.port == 11113
    assert cfg.scp.ae_title == "FROM_TOML"
    assert cfg.storage.root == Path("/data/node")


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"DICOM_NODE__SCP__PORT": "70000"}, "scp.port"),
        ({"DICOM_NODE__SCP__PORT": "abc"}, "scp.port"),
        ({"DICOM_NODE__SCP__AE_TITLE": "WAY_TOO_LONG_AE_TITLE"}, "scp.ae_title"),
        ({"DICOM_NODE__STORAGE__DUPLICATE_POLICY": "sometimes"}, "storage.duplicate_policy"),
        ({"DICOM_NODE__SCP__NO_SUCH_KEY": "1"}, "scp.no_such_key"),
        ({"DICOM_NODE__SCP__MAX_PDU": "1"}, "scp.max_pdu"),
    ],
)
def test_bad_values_name_the_key(env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env)
    message = str(info.value)
    assert message.startswith(key + ":"), message
    assert "\n" not in message


def test_open_binding_needs_an_allowlist() -> None:
    with pytest.raises(ConfigError, match="allowed_peers"):
        load_config(None, {"DICOM_NODE__SCP__HOST": "0.0.0.0"})
    cfg = load_config(None, {"DICOM_NODE__SCP__HOST": "0.0.0.0", "DICOM_NODE__SCP__ALLOW_ANY_CALLING_AE": "true"})
    assert cfg.scp.allow_any_calling_ae


def test_allowlist_from_toml(tmp_path: Path) -> None:
    toml = tmp_path / "node.toml"
    toml.write_text(
        '[scp]\nhost = "0.0.0.0"\n[[scp.allowed_peers]]\nae_title = "PACS"\nhosts = ["10.0.0.0/8"]\n'
    )
    cfg = load_config(toml, {})
    assert cfg.scp.allowed_peers[0].ae_title == "PACS"
    toml.write_text('[scp]\n[[scp.allowed_peers]]\nae_title = "PACS"\nhosts = ["not-an-address"]\n')
    with pytest.raises(ConfigError, match=r"^scp\.allowed_peers\.0\.hosts"):
        load_config(toml, {})


def test_cli_refuses_bad_config_with_one_line(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "DICOM_NODE__SCP__PORT": "-5", "DICOM_NODE__STORAGE__ROOT": str(tmp_path)}
    out = subprocess.run([dicom_node_exe(), "serve"], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "scp.port" in lines[0], out.stderr


def test_missing_config_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", {})


def test_sources_config_names_its_problems() -> None:
    """Pollers must name existing routing rules and remotes; names never become paths."""
    from pydantic import ValidationError

    from dicom_node.config import NodeConfig

    remote = {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104}
    poller = {"name": "old-pacs", "kind": "dimse", "remote": "pacs", "rules": ["nope"]}
    with pytest.raises(ValidationError, match="rules \\['nope'\\] are not in"):
        NodeConfig.model_validate({"sources": {"remotes": [remote], "pollers": [poller]}})
    with pytest.raises(ValidationError, match="not in \\[\\[sources.remotes\\]\\]"):
        NodeConfig.model_validate({"sources": {"pollers": [dict(poller, rules=[])]}})
    with pytest.raises(ValidationError, match="name '../x'"):
        NodeConfig.model_validate({"sources": {"remotes": [dict(remote, name="../x")]}})
    with pytest.raises(ValidationError, match="169.254"):
        NodeConfig.model_validate({"sources": {"pollers": [
            {"name": "w", "kind": "dicomweb", "url": "http://169.254.169.254/dicom-web"}]}})
    ok = NodeConfig.model_validate({
        "routing": {"rules": [{"name": "ct", "models": ["ct-body"]}]},
        "sources": {"remotes": [remote], "pollers": [dict(poller, rules=["ct"])]},
    })
    found = ok.sources.poller("old-pacs")
    assert found is not None and found.remote == "pacs"
