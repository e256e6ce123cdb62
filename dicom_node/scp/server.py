"""TCP listener of the SCP: accepts connections and runs one thread per association."""

from __future__ import annotations

import logging
import socket
import threading
import time

from dicom_node.errors import StorageError
from dicom_node.scp.association import AssociationHandler
from dicom_node.scp.context import ScpContext

log = logging.getLogger(__name__)

#: Connections beyond max_associations still get a thread, to answer A-ASSOCIATE-RJ
#: (transient); past this many extra, the connection is closed at once.
_REJECT_HEADROOM = 32


class StorageServer:
    """Listen on ``scp.host:scp.port`` and serve associations.

    Parameters
    ----------
    ctx : ScpContext
        Shared configuration, storage and counters.
    """

    def __init__(self, ctx: ScpContext) -> None:
        self.ctx = ctx
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._active = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0)."""
        assert self._sock is not None
        return int(self._sock.getsockname()[1])

    @property
    def listening(self) -> bool:
        """True while the accept loop runs."""
        return self._thread is not None and self._thread.is_alive() and not self._stopping.is_set()

    @property
    def active(self) -> int:
        """Associations currently being served."""
        return self._active

    def start(self) -> None:
        """Bind, listen and start accepting in a background thread.

        Raises
        ------
        StorageError
            When the address cannot be bound (the message names it).
        """
        cfg = self.ctx.config
        family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((cfg.host, cfg.port))
        except OSError as exc:
            sock.close()
            raise StorageError(f"cannot listen on {cfg.host}:{cfg.port}: {exc.strerror}") from exc
        sock.listen(128)
        sock.settimeout(0.5)
        self._sock = sock
        self._thread = threading.Thread(target=self._accept_loop, name="scp-accept", daemon=True)
        self._thread.start()
        log.info("SCP listening ae_title=%s host=%s port=%d", cfg.ae_title, cfg.host, self.port)

    def stop(self, drain_timeout: float = 5.0) -> None:
        """Stop accepting, then give running associations ``drain_timeout`` seconds to end.

        Associations still running after that are answered 0xA700 when their
        next instance needs the index (nothing unacknowledged is lost: the
        sender retries).
        """
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
        if self._sock is not None:
            self._sock.close()
        deadline = time.monotonic() + drain_timeout
        while self._active and time.monotonic() < deadline:
            time.sleep(0.02)

    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._stopping.is_set():
            try:
                conn, addr = self._sock.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                log.error("accept failed error=%s", exc)
                continue
            with self._lock:
                if self._active >= self.ctx.config.max_associations + _REJECT_HEADROOM:
                    conn.close()
                    continue
                over = self._active >= self.ctx.config.max_associations
                self._active += 1
            handler = AssociationHandler(conn, str(addr[0]), self.ctx, over_limit=over)
            threading.Thread(target=self._run, args=(handler,), name=f"assoc-{handler.id[:8]}", daemon=True).start()

    def _run(self, handler: AssociationHandler) -> None:
        try:
            handler.run()
        finally:
            with self._lock:
                self._active -= 1
