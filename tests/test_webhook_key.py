"""The webhook signing key made at first start: nodes starting together on one storage root share one whole key."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

from dicom_node.config import NodeConfig
from dicom_node.invocations import load_secret
from tests.conftest import node_config


def _load(config: NodeConfig, start: threading.Barrier, keys: list[bytes | Exception]) -> None:
    start.wait()
    try:
        keys.append(load_secret(config))
    except ValueError as exc:
        keys.append(exc)


def test_nodes_starting_together_on_one_root_read_one_whole_key(tmp_path: Path) -> None:
    """Before, one node could open the key between another's O_EXCL create and its write, read it empty and exit."""
    for attempt in range(30):
        config = node_config(tmp_path / f"root-{attempt}")
        config.storage.root.mkdir(parents=True, exist_ok=True)
        start = threading.Barrier(8)
        keys: list[bytes | Exception] = []
        threads = [threading.Thread(target=_load, args=(config, start, keys)) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(set(keys)) == 1, keys
        key = keys[0]
        assert isinstance(key, bytes) and len(key) == 64 and int(key, 16) >= 0
        path = config.storage.root / "webhook.key"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_bytes() == key
        assert [p.name for p in config.storage.root.iterdir()] == ["webhook.key"], "no temporary file left"
