"""``dicom-node serve``: run the node until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from types import FrameType

from dicom_node.config import NodeConfig
from dicom_node.logs import setup_logging

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``serve`` subcommand."""
    p = sub.add_parser("serve", help="run the DICOM node (SCP, assembly) in the foreground")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, config: NodeConfig) -> int:
    """Start the node and block until a termination signal."""
    # Deferred: the node pulls in pydicom, pynetdicom and uvicorn, which other commands' --help never needs.
    from dicom_node.api.server import ApiFrontend
    from dicom_node.node import Node

    setup_logging(config.logging)
    node = Node(config, frontend=ApiFrontend)
    node.start()
    done = threading.Event()

    def _stop(signum: int, _frame: FrameType | None) -> None:
        log.info("stopping on signal=%d", signum)
        done.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    log.info("node ready storage_root=%s", config.storage.root.resolve())
    done.wait()
    node.stop()
    return 0
