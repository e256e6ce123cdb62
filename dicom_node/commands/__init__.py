"""Subcommands of ``dicom-node``, one module each (see :mod:`dicom_node.cli`).

Shared here: how a command that only reads the node's state opens the index.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dicom_node.errors import StorageError

if TYPE_CHECKING:
    from dicom_node.config import NodeConfig
    from dicom_node.index import Index


def existing_index(config: NodeConfig) -> Index:
    """Open the index under ``storage.root`` without creating a storage root.

    Read-only commands (``status``, ``jobs``, ``results``, ``sources list``) use
    this: run from the wrong folder or with the wrong config, they used to
    create an empty ``./var`` and report zeros; now they say there is no node
    state there.

    Raises
    ------
    StorageError
        When ``storage.root`` holds no index (the CLI prints it and exits 1).
    """
    from dicom_node.node import INDEX_NAME, open_index

    root = config.storage.root
    # On PostgreSQL (storage.database) the index is that database, not a file under the root.
    if config.storage.database is None and not (root / INDEX_NAME).is_file():
        raise StorageError(
            f"no node state at {root.resolve()} (no {INDEX_NAME}): nothing has been stored with this "
            "configuration; check --config or DICOM_NODE__STORAGE__ROOT (`dicom-node serve` creates it)"
        )
    return open_index(config)


def has_index(config: NodeConfig) -> bool:
    """True when ``storage.root`` already holds the index, or it is on PostgreSQL (``storage.database``)."""
    from dicom_node.node import INDEX_NAME

    return config.storage.database is not None or (config.storage.root / INDEX_NAME).is_file()
