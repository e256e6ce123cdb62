"""A recording Storage SCP (pynetdicom) used as a result destination by the end-to-end tests."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.transport import ThreadedAssociationServer

from tests.conftest import free_port


@dataclass
class Receiver:
    """Records every C-STORE it accepts; ``status`` is what it answers."""

    port: int = 0
    status: int = 0x0000
    received: list[Dataset] = field(default_factory=list)
    _server: ThreadedAssociationServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, port: int | None = None) -> "Receiver":
        ae = AE(ae_title="RESULTS_SCP")
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        self.port = port or free_port()

        def on_store(event: evt.Event) -> int:
            ds = event.dataset
            ds.file_meta = event.file_meta
            with self._lock:
                self.received.append(ds)
            return self.status

        self._server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def uids(self) -> list[str]:
        with self._lock:
            return [str(ds.SOPInstanceUID) for ds in self.received]
