"""Start a real Orthanc (with its DICOMweb plugin) on loopback for tests.

Orthanc 1.10 + orthanc-dicomweb 1.7 from Debian (``apt-get install orthanc
orthanc-dicomweb``). :func:`run_orthanc` writes a small JSON configuration
(ephemeral HTTP and DICOM ports, a temporary storage folder, remote access
off, optional registered users for HTTP Basic authentication), starts the
``Orthanc`` binary, waits until its REST API answers and its DICOM port
listens, yields an :class:`OrthancPeer`, and stops the process (SIGTERM, then
SIGKILL) on exit. Used by the delivery tests (STOW-RS, C-STORE into Orthanc)
and reusable wherever a real PACS is needed.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.peers.ports import free_port, stop_process

log = logging.getLogger(__name__)

#: Where Debian's orthanc-dicomweb puts the plugin; override with DICOM_NODE_ORTHANC_PLUGINS.
PLUGIN_DIR = Path(os.environ.get("DICOM_NODE_ORTHANC_PLUGINS", "/usr/share/orthanc/plugins"))
DICOMWEB_PLUGIN = "libOrthancDicomWeb.so"
#: Loopback requests must not go through a proxy named in the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def find_orthanc() -> str | None:
    """Path of the ``Orthanc`` binary, or None."""
    return shutil.which("Orthanc")


def find_dicomweb_plugin() -> Path | None:
    """Path of the DICOMweb plugin library, or None."""
    path = PLUGIN_DIR / DICOMWEB_PLUGIN
    return path if path.exists() else None


@dataclass(frozen=True)
class OrthancPeer:
    """A running Orthanc: where to reach it and how to ask what it stored."""

    http_url: str
    dicomweb_url: str
    dicom_port: int
    aet: str
    storage: Path
    log_file: Path
    user: tuple[str, str] | None = None

    def _request(self, path: str, data: bytes | None = None) -> Any:
        request = urllib.request.Request(self.http_url + path, data=data, method="POST" if data is not None else "GET")
        if self.user is not None:
            token = base64.b64encode(f"{self.user[0]}:{self.user[1]}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        with _OPENER.open(request, timeout=10) as response:
            return json.loads(response.read() or b"null")

    def get(self, path: str) -> Any:
        """GET a REST resource (e.g. ``/instances``) and decode its JSON."""
        return self._request(path)

    def lookup(self, uid: str) -> list[dict[str, Any]]:
        """Orthanc's ``/tools/lookup``: resources whose DICOM UID is ``uid``."""
        return list(self._request("/tools/lookup", uid.encode()))

    def has_instance(self, sop_instance_uid: str) -> bool:
        """True when Orthanc stored an instance with this SOP Instance UID."""
        return any(r.get("Type") == "Instance" for r in self.lookup(sop_instance_uid))


def write_config(
    folder: Path, http_port: int, dicom_port: int, aet: str,
    users: Mapping[str, str] | None, plugins: Sequence[str], extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write the Orthanc JSON configuration and return its path."""
    config = {
        "Name": "dicom-node-test",
        "StorageDirectory": str(folder / "db"),
        "IndexDirectory": str(folder / "db"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": aet,
        "DicomCheckCalledAet": True,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": bool(users),
        "RegisteredUsers": dict(users or {}),
        "Plugins": list(plugins),
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "StableAge": 1,
        "SaveJobs": False,
        "HttpsVerifyPeers": False,
        **dict(extra or {}),
    }
    path = folder / "orthanc.json"
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return path


def _ready(url: str, user: tuple[str, str] | None, dicom_port: int) -> bool:
    request = urllib.request.Request(url + "/system")
    if user is not None:
        token = base64.b64encode(f"{user[0]}:{user[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with _OPENER.open(request, timeout=2) as response:
            if response.status != 200:
                return False
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", dicom_port)) == 0


def _start(binary: str, folder: Path, aet: str, users: Mapping[str, str] | None, plugins: Sequence[str], timeout: float,
           ports: tuple[int | None, int | None] = (None, None), extra: Mapping[str, Any] | None = None,
           ) -> tuple[subprocess.Popen[bytes], OrthancPeer] | None:
    """One start attempt (fresh ports unless given); None when the process exited early (port race)."""
    http_port, dicom_port = ports[0] or free_port(), ports[1] or free_port()
    config = write_config(folder, http_port, dicom_port, aet, users, plugins, extra)
    log_file = folder / "orthanc.log"
    with log_file.open("ab") as out:
        proc = subprocess.Popen([binary, str(config)], stdout=out, stderr=subprocess.STDOUT, cwd=folder)
    user = next(iter(users.items())) if users else None
    url = f"http://127.0.0.1:{http_port}"
    peer = OrthancPeer(url, url + "/dicom-web", dicom_port, aet, folder / "db", log_file, user)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return None
        if _ready(url, user, dicom_port):
            return proc, peer
        time.sleep(0.05)
    stop_process(proc, timeout=15)
    raise TimeoutError(f"Orthanc did not become ready in {timeout:.0f} s; see {log_file}")


@contextmanager
def run_orthanc(
    folder: Path, *, aet: str = "ORTHANC", users: Mapping[str, str] | None = None,
    plugins: Sequence[str] | None = None, timeout: float = 30.0, binary: str | None = None,
    http_port: int | None = None, dicom_port: int | None = None, extra: Mapping[str, Any] | None = None,
) -> Iterator[OrthancPeer]:
    """Run Orthanc with the DICOMweb plugin on loopback for the duration of the ``with`` block.

    Parameters
    ----------
    folder : pathlib.Path
        Empty folder for the configuration, storage and log.
    aet : str
        Orthanc's DICOM AE title.
    users : mapping, optional
        ``{"user": "password"}`` enables HTTP Basic authentication.
    plugins : sequence of str, optional
        Plugin libraries or folders; default the DICOMweb plugin.
    timeout : float
        Seconds to wait for readiness.
    binary : str, optional
        The Orthanc executable (default: ``Orthanc`` on PATH).
    http_port, dicom_port : int, optional
        Fixed ports, to restart Orthanc where a client expects it (same ``folder`` keeps its data).
    extra : mapping, optional
        More configuration keys, e.g. ``{"DicomModalities": {"node": ["DICOM_NODE", "127.0.0.1", 11112]}}``
        so Orthanc accepts C-FIND/C-GET from the node and knows it as a C-MOVE destination.

    Yields
    ------
    OrthancPeer
        URLs, ports and REST helpers.
    """
    binary = binary or find_orthanc()
    if binary is None:
        raise FileNotFoundError("Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)")
    if plugins is None:
        plugin = find_dicomweb_plugin()
        if plugin is None:
            raise FileNotFoundError(f"{DICOMWEB_PLUGIN} not found in {PLUGIN_DIR} (apt-get install orthanc-dicomweb)")
        plugins = [str(plugin)]
    folder.mkdir(parents=True, exist_ok=True)
    started = None
    for _ in range(3):
        started = _start(binary, folder, aet, users, plugins, timeout, (http_port, dicom_port), extra)
        if started is not None:
            break
    if started is None:
        raise RuntimeError(f"Orthanc exited at start three times; see {folder / 'orthanc.log'}")
    proc, peer = started
    log.info("orthanc started http=%s dicom_port=%d", peer.http_url, peer.dicom_port)
    try:
        yield peer
    finally:
        stop_process(proc, timeout=15)
