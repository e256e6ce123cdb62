"""TCP listener of the SCP: accepts connections and runs one thread per association."""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time

from dicom_node.errors import StorageError
from dicom_node.scp.association import AssociationHandler
from dicom_node.scp.context import ScpContext
from dicom_node.scp.tls import handshake, server_context

log = logging.getLogger(__name__)

#: Connections beyond max_associations still get a thread, to answer A-ASSOCIATE-RJ
#: (transient); past this many extra, the connection is closed at once.
_REJECT_HEADROOM = 32


class StorageServer:
    """Listen on ``scp.host:scp.port`` (and ``scp.tls.port``, DICOM TLS) and serve associations.

    Parameters
    ----------
    ctx : ScpContext
        Shared configuration, storage and counters.

    Raises
    ------
    ConfigError
        ``[scp.tls]`` names a certificate, key or CA file that cannot be loaded.
    """

    def __init__(self, ctx: ScpContext) -> None:
        self.ctx = ctx
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        # Built here, so an unreadable certificate or key stops the node before anything starts.
        self._tls_context = server_context(ctx.config.tls) if ctx.config.tls.enabled else None
        self._tls_sock: socket.socket | None = None
        self._tls_thread: threading.Thread | None = None
        self._active = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    @property
    def port(self) -> int:
        """The bound plain port (useful when configured as 0); the TLS port when TLS only."""
        sock = self._sock or self._tls_sock
        assert sock is not None
        return int(sock.getsockname()[1])

    @property
    def tls_port(self) -> int | None:
        """The bound DICOM TLS port, or None without ``[scp.tls]``."""
        return None if self._tls_sock is None else int(self._tls_sock.getsockname()[1])

    @property
    def listening(self) -> bool:
        """True while the accept loops run."""
        threads = [t for t in (self._thread, self._tls_thread) if t is not None]
        return bool(threads) and all(t.is_alive() for t in threads) and not self._stopping.is_set()

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
        if cfg.tls.plain:
            self._sock = self._bind(cfg.port)
            self._thread = threading.Thread(target=self._accept_loop, args=(self._sock, None), name="scp-accept",
                                            daemon=True)
            self._thread.start()
            log.info("SCP listening ae_title=%s host=%s port=%d", cfg.ae_title, cfg.host, self.port)
        if self._tls_context is not None and cfg.tls.port is not None:
            try:
                self._tls_sock = self._bind(cfg.tls.port)
            except StorageError:
                self.stop(0.0)
                raise
            self._tls_thread = threading.Thread(target=self._accept_loop, args=(self._tls_sock, self._tls_context),
                                                name="scp-accept-tls", daemon=True)
            self._tls_thread.start()
            log.info("SCP listening with TLS ae_title=%s host=%s port=%d mutual_tls=%s", cfg.ae_title, cfg.host,
                     self.tls_port, cfg.tls.ca_certificates is not None)

    def _bind(self, port: int) -> socket.socket:
        cfg = self.ctx.config
        family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((cfg.host, port))
        except OSError as exc:
            sock.close()
            raise StorageError(f"cannot listen on {cfg.host}:{port}: {exc.strerror}") from exc
        sock.listen(128)
        sock.settimeout(0.5)
        return sock

    def stop(self, drain_timeout: float = 5.0) -> None:
        """Stop accepting, then give running associations ``drain_timeout`` seconds to end.

        Associations still running after that are answered 0xA700 when their
        next instance needs the index (nothing unacknowledged is lost: the
        sender retries).
        """
        self._stopping.set()
        for thread in (self._thread, self._tls_thread):
            if thread is not None:
                thread.join()
        for sock in (self._sock, self._tls_sock):
            if sock is not None:
                sock.close()
        deadline = time.monotonic() + drain_timeout
        while self._active and time.monotonic() < deadline:
            time.sleep(0.02)

    def _accept_loop(self, listener: socket.socket, tls: ssl.SSLContext | None) -> None:
        while not self._stopping.is_set():
            try:
                conn, addr = listener.accept()
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
            if tls is None:
                handler = AssociationHandler(conn, str(addr[0]), self.ctx, over_limit=over)
                threading.Thread(target=self._run, args=(handler,), name=f"assoc-{handler.id[:8]}", daemon=True).start()
            else:
                # The handshake runs in the association's thread: a silent peer must not hold the accept loop.
                threading.Thread(target=self._run_tls, args=(conn, str(addr[0]), tls, over), name="assoc-tls",
                                 daemon=True).start()

    def _run_tls(self, conn: socket.socket, peer_host: str, context: ssl.SSLContext, over: bool) -> None:
        """Handshake, then serve the wrapped socket with the same handler as a plain connection."""
        wrapped = None
        try:
            wrapped = handshake(conn, peer_host, context, self.ctx.config.tls.handshake_timeout)
        finally:
            if wrapped is None:  # refused (or failed): this connection's slot ends here
                with self._lock:
                    self._active -= 1
        if wrapped is not None:
            self._run(AssociationHandler(wrapped, peer_host, self.ctx, over_limit=over))

    def _run(self, handler: AssociationHandler) -> None:
        try:
            handler.run()
        finally:
            with self._lock:
                self._active -= 1
