"""``dicom-node status``: counts from the index.

Read-only: a storage root that does not exist is reported (exit 1), not created.
"""

from __future__ import annotations

import argparse
import json

from dicom_node.commands import existing_index
from dicom_node.commands.output import echo
from dicom_node.config import NodeConfig


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``status`` subcommand."""
    p = sub.add_parser("status", help="print counts of studies, series and instances from the index")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, config: NodeConfig) -> int:
    """Print studies, series, instances, pending and complete series."""
    counts = existing_index(config).counts()
    if args.json:
        echo(json.dumps(counts))
    else:
        echo(f"storage root: {config.storage.root.resolve()}")
        for key in ("studies", "series", "instances", "pending", "complete"):
            echo(f"{key + ':':<11}{counts[key]}")
    return 0
