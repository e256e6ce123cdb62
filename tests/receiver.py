"""Recording peers shared by the tests: a pynetdicom Storage SCP, an HTTP webhook receiver, a WADO-RS server.

All are real servers on loopback: the node talks to them over DICOM and HTTP
exactly as it would to a PACS or a RIS. The WADO-RS server serves fixed files
(for predict's ``dicomweb_uri``); pull tests use a real Orthanc instead.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt

from dicom_node.config.delivery import DimseDestination

SEG = "1.2.840.10008.5.1.4.1.1.66.4"
SR3D = "1.2.840.10008.5.1.4.1.1.88.34"
SCP_AE = "RESULTS_SCP"


@dataclass
class Received:
    """One C-STORE the SCP got."""

    sop_instance_uid: str
    transfer_syntax: str
    calling_ae: str
    dataset: Dataset


@dataclass
class RecordingSCP:
    """A pynetdicom Storage SCP on a loopback port that records what it receives and answers ``status``."""

    status: int = 0x0000
    syntaxes: tuple[str, ...] = (str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian))
    sop_classes: tuple[str, ...] = (SEG, SR3D, str(CTImageStorage))
    require_calling: tuple[str, ...] = ()
    max_associations: int = 10
    received: list[Received] = field(default_factory=list)
    port: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def start(self, port: int = 0) -> RecordingSCP:
        """Listen on ``port`` (0: an ephemeral one, see :attr:`port`)."""
        ae = AE(ae_title=SCP_AE)
        ae.maximum_associations = self.max_associations
        ae.require_called_aet = True
        if self.require_calling:
            ae.require_calling_aet = list(self.require_calling)
        for sop_class in self.sop_classes:
            ae.add_supported_context(sop_class, list(self.syntaxes))
        self._server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        self.port = int(self._server.server_address[1])
        return self

    def _on_store(self, event: Any) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        with self._lock:
            self.received.append(Received(str(ds.SOPInstanceUID), str(event.context.transfer_syntax),
                                          event.assoc.requestor.ae_title, ds))
        return self.status

    def stop(self) -> None:
        """Shut the server down."""
        self._server.shutdown()

    def destination(self, **over: Any) -> DimseDestination:
        """A delivery destination pointing at this SCP."""
        values: dict[str, Any] = dict(name="pacs", ae_title=SCP_AE, host="127.0.0.1", port=self.port,
                                      acse_timeout=5, dimse_timeout=10, network_timeout=10)
        values.update(over)
        return DimseDestination(**values)

    def datasets(self) -> list[Dataset]:
        """What arrived, in order."""
        with self._lock:
            return [r.dataset for r in self.received]

    def uids(self) -> list[str]:
        """SOP Instance UIDs of what arrived, in order (duplicates kept)."""
        with self._lock:
            return [r.sop_instance_uid for r in self.received]


class WebhookReceiver:
    """An HTTP server on loopback recording POSTs; answers 500 to the first ``fail`` of them."""

    def __init__(self, fail: int = 0) -> None:
        self.fail = fail
        self.posts: list[tuple[dict[str, str], bytes]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server API)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                owner.posts.append((dict(self.headers), body))
                self.send_response(500 if len(owner.posts) <= owner.fail else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                """Quiet."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        """Shut the server down."""
        self.server.shutdown()
        self.server.server_close()


def multipart_related(parts: list[bytes], boundary: str = "b0undary") -> tuple[bytes, str]:
    """A ``multipart/related; type="application/dicom"`` body of PS3.10 files and its Content-Type (PS3.18 8.6)."""
    mark = b"--" + boundary.encode()
    body = b"".join(mark + b"\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n" for p in parts) + mark + b"--\r\n"
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


class WadoServer:
    """A WADO-RS server on loopback serving ``files``, recording each request's path and Authorization.

    ``.../series`` answers the files as one multipart/related series, ``/moved``
    redirects to a metadata address (for the no-redirects check), any other
    path answers the first file as ``application/dicom``.
    """

    def __init__(self, files: list[bytes]) -> None:
        self.files = files
        self.seen: list[dict[str, str]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                owner.seen.append({"path": self.path, "authorization": self.headers.get("Authorization", "")})
                if self.path == "/moved":
                    self.send_response(302)
                    self.send_header("Location", "http://169.254.169.254/latest/meta-data")
                    self.end_headers()
                    return
                if self.path.endswith("/series"):
                    body, ctype = multipart_related(owner.files, "XyZ")
                else:
                    body, ctype = owner.files[0], "application/dicom"
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                """Quiet."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        """Shut the server down."""
        self.server.shutdown()
        self.server.server_close()
