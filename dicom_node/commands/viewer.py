"""``dicom-node viewer``: serve a built OHIF viewer that browses this node's DICOMweb.

The node itself must be running (``make run``) and accept the viewer's origin
(``api.cors_allowed_origins``); this command only serves the viewer's files,
on its own port, and tells the viewer where the node's DICOMweb is.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from dicom_node.commands.output import echo
from dicom_node.config import NodeConfig

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``viewer`` subcommand."""
    p = sub.add_parser("viewer", help="serve a built OHIF viewer (@ohif/app's dist/) against the node's DICOMweb")
    p.add_argument("--ohif", type=Path, help="the dist/ folder of the @ohif/app npm package "
                   "(default: where `make viewer` unpacks it, under ~/.cache/dicom-node)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve the viewer on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=3000, help="port to serve the viewer on (default: 3000)")
    p.add_argument("--dicomweb", help="the node's DICOMweb root (default: from the config's api host and port)")
    p.add_argument("--token-file", type=Path, help="file holding a bearer token (API key or JWT) the viewer sends")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, config: NodeConfig) -> int:
    """Serve until interrupted."""
    import uvicorn

    from dicom_node.api.viewer import default_dist, viewer_app

    root = args.dicomweb or f"http://{config.api.host}:{config.api.port}/dicomweb"
    token = args.token_file.read_text().strip() if args.token_file else None
    try:
        app = viewer_app(args.ohif or default_dist(), root.rstrip("/"), token)
    except FileNotFoundError as exc:
        echo(f"dicom-node viewer: {exc}", file=sys.stderr)
        return 2
    origin = f"http://{args.host}:{args.port}"
    if origin not in config.api.cors_allowed_origins:
        echo(f"dicom-node viewer: the node does not list {origin} in api.cors_allowed_origins; the viewer's "
             f"requests will be refused by the browser (set DICOM_NODE__API__CORS_ALLOWED_ORIGINS='[\"{origin}\"]')",
             file=sys.stderr)
    echo(f"OHIF viewer at {origin}/ reading {root}", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False, server_header=False)
    return 0
