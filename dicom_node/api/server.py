"""uvicorn in a background thread of the node process, and the REST front end of a node."""

from __future__ import annotations

import logging
import threading
import time

import uvicorn
from fastapi import FastAPI

from dicom_node.api.app import create_app
from dicom_node.api.bodyguard import header_timeout_protocol
from dicom_node.api.deps import ApiServices
from dicom_node.errors import StorageError
from dicom_node.node import Node

log = logging.getLogger(__name__)


class ApiServer:
    """Serve ``app`` on ``host:port`` until :meth:`stop`.

    Parameters
    ----------
    app : FastAPI
        The application.
    host, port : str, int
        Where to listen (port 0 picks a free one; see :attr:`port`).
    """

    def __init__(self, app: FastAPI, host: str, port: int, header_timeout: float = 10.0,
                 max_header_bytes: int = 16 * 1024) -> None:
        # h11 with a deadline on each request's headers (slowloris; uvicorn has none of its own),
        # a bounded header block, and idle keep-alive connections closed after 5 s.
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                lifespan="off", server_header=False, timeout_keep_alive=5,
                                http=header_timeout_protocol(header_timeout),
                                h11_max_incomplete_event_size=max_header_bytes)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="api", daemon=True)

    @property
    def port(self) -> int:
        """The bound port."""
        return int(self._server.servers[0].sockets[0].getsockname()[1])

    def start(self, timeout: float = 15.0) -> None:
        """Start and wait until the socket is bound."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise StorageError(f"the REST API could not listen on {self._server.config.host}:{self._server.config.port}")
            time.sleep(0.02)
        log.info("REST API listening host=%s port=%d", self._server.config.host, self.port)

    def stop(self) -> None:
        """Ask uvicorn to exit and wait for it."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(10)


class ApiFrontend:
    """The REST API of one node: its services, the invocation service and uvicorn.

    Passed to :class:`~dicom_node.node.Node` as its front-end factory (``Node(config,
    frontend=ApiFrontend)``); the node starts it after its core and stops it first.

    Parameters
    ----------
    node : Node
        The node whose services the routes use.
    """

    def __init__(self, node: Node) -> None:
        self.services = ApiServices.of(node)
        api = node.config.api
        self.server = ApiServer(create_app(node.config, self.services), api.host, api.port,
                                api.header_timeout, api.max_header_bytes)

    @property
    def port(self) -> int:
        """The bound port."""
        return self.server.port

    def start(self) -> None:
        """Resume queued invocations and pending webhooks, then listen."""
        self.services.invocations.start()
        self.server.start()

    def stop(self) -> None:
        """Stop listening, then stop the invocation service."""
        self.server.stop()
        self.services.invocations.stop()
