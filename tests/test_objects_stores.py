"""ObjectStores against real emulators: Azurite (Azure Blob), fake-gcs-server (GCS; its writes go to
gcp-storage-emulator, ``gcs_write_emulator`` in tests/objects_peers.py), moto's S3 server.

Each store: read an input the emulator holds, write a result and check it in the
bucket through the emulator's own API, list, stream to a file, refuse over the cap
(nothing kept), answer a missing object, refuse a bucket that is not allowlisted
without connecting, and answer a wrong credential with a clear error.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dicom_node.config.objects import ObjectsConfig
from dicom_node.node import Node
from dicom_node.objects import ObjectNotFound, ObjectRefused, ObjectStoreError, ObjectStores, ObjectTooLarge, ObjectUrl
from tests.objects_peers import ObjectPeer

STORES = ["azurite", "gcs_emulator", "s3_server"]


@pytest.fixture(params=STORES)
def peer(request: pytest.FixtureRequest) -> ObjectPeer:
    """Each emulator in turn (session-scoped underneath)."""
    found: ObjectPeer = request.getfixturevalue(request.param)
    return found


@pytest.fixture
def writer(peer: ObjectPeer, request: pytest.FixtureRequest) -> ObjectPeer:
    """The emulator that takes writes for ``peer``'s store.

    For GCS that is gcp-storage-emulator behind the ETag shim (``gcs_write_emulator``): fake-gcs-server answers
    obstore's XML-API object PUT with 400 (tests/objects_peers.py, ``GCS_WRITE_GAP``).
    """
    if peer.store != "gcs":
        return peer
    found: ObjectPeer = request.getfixturevalue("gcs_write_emulator")
    return found


def test_writes_a_result_that_is_then_in_the_bucket(writer: ObjectPeer) -> None:
    stores = ObjectStores(writer.config)
    url = writer.url("out/seg.dcm", "results")
    stores.put(url, b"DICM result", content_type="application/dicom")
    assert writer.fetch("out/seg.dcm") == b"DICM result"
    if writer.store != "gcs":
        # gcp-storage-emulator's XML-API GET lacks the headers obstore reads (its reads run on fake-gcs-server).
        assert stores.get(url) == b"DICM result"


def test_writes_a_file(writer: ObjectPeer, tmp_path: Path) -> None:
    source = tmp_path / "sr.dcm"
    source.write_bytes(os.urandom(70_000))
    ObjectStores(writer.config).put(writer.url("out/sr.dcm", "results"), source)
    assert writer.fetch("out/sr.dcm") == source.read_bytes()


def test_fake_gcs_server_refuses_obstores_write_clearly(gcs_emulator: ObjectPeer) -> None:
    """Why GCS writes use another emulator; and that a store's refusal is a clear, non-retryable error."""
    with pytest.raises(ObjectStoreError, match="Google Cloud Storage answered HTTP 400 to write") as caught:
        ObjectStores(gcs_emulator.config).put(gcs_emulator.url("probe.dcm", "results"), b"x")
    assert not caught.value.retryable


def test_lists_recursively_under_a_prefix_and_bounded(peer: ObjectPeer) -> None:
    for key in ("list/a/1.dcm", "list/a/2.dcm", "list/b/deep/3.dcm", "listing-other/4.dcm"):
        peer.seed(key, b"x" * 10)
    stores = ObjectStores(peer.config)
    found = stores.list(peer.url("list/"))
    assert sorted(info.url.key for info in found) == ["list/a/1.dcm", "list/a/2.dcm", "list/b/deep/3.dcm"]
    assert all(info.size == 10 and info.modified.tzinfo is not None for info in found)
    assert str(found[0].url).startswith(f"{peer.scheme}://inputs/list/")
    assert len(stores.list(peer.url("list"), max_items=2)) == 2
    assert stores.list(peer.url("nothing-here/")) == []


def test_download_streams_to_a_file(peer: ObjectPeer, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    url = peer.seed("big/volume.bin", data)
    dest = tmp_path / "volume.bin"
    assert ObjectStores(peer.config).download(url, dest) == len(data)
    assert dest.read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["volume.bin"]


def test_over_the_cap_is_refused_and_nothing_is_kept(peer: ObjectPeer, tmp_path: Path) -> None:
    url = peer.seed("big/over.bin", b"y" * 5000)
    stores = ObjectStores(peer.config)
    with pytest.raises(ObjectTooLarge, match="over the cap of 4096 bytes") as caught:
        stores.download(url, tmp_path / "over.bin", max_bytes=4096)
    assert caught.value.cap == 4096 and not caught.value.retryable
    assert list(tmp_path.iterdir()) == []
    capped = ObjectStores(ObjectsConfig.model_validate({**peer.section, "max_object_bytes": 1000}))
    with pytest.raises(ObjectTooLarge, match="cap of 1000 bytes"):
        capped.get(url)
    with pytest.raises(ObjectTooLarge, match="cap of 1000 bytes"):  # a caller cannot raise the node's cap
        capped.get(url, max_bytes=10_000)


def test_a_missing_object_is_not_found(peer: ObjectPeer, tmp_path: Path) -> None:
    stores = ObjectStores(peer.config)
    url = peer.url("no/such/object.dcm")
    with pytest.raises(ObjectNotFound, match=f"{peer.scheme}://inputs/no/such/object.dcm not found"):
        stores.get(url)
    with pytest.raises(ObjectNotFound):
        stores.download(url, tmp_path / "x")
    assert list(tmp_path.iterdir()) == []


class _Listener:
    """A TCP listener that counts the connections it accepts (the endpoint of a store that must not be reached)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()
        self._thread.join(timeout=5)


@pytest.fixture
def listener() -> Iterator[_Listener]:
    found = _Listener()
    yield found
    found.close()


def test_a_bucket_not_allowlisted_is_refused_without_a_connection(peer: ObjectPeer, listener: _Listener,
                                                                   tmp_path: Path) -> None:
    section = {store: {**values, "endpoint": f"http://127.0.0.1:{listener.port}" + (
        "/devstoreaccount1" if store == "azure" else "")} for store, values in peer.section.items()}
    stores = ObjectStores(ObjectsConfig.model_validate(section))
    other = ObjectUrl(peer.scheme, "other-bucket", "a.dcm")
    calls = [lambda: stores.get(other), lambda: stores.download(other, tmp_path / "a"),
             lambda: stores.put(other, b"x"), lambda: stores.list(other)]
    for call in calls:
        with pytest.raises(ObjectRefused, match="bucket 'other-bucket' refused: it is not in the allowlist"):
            call()
    nothing = ObjectStores(ObjectsConfig.model_validate({}))  # default: no bucket of any store is allowed
    with pytest.raises(ObjectRefused, match="no buckets are allowed"):
        nothing.get(peer.url("a.dcm"))
    assert listener.accepted == 0


def test_a_wrong_credential_is_a_clear_error(peer: ObjectPeer) -> None:
    url = peer.seed("secret/a.dcm", b"payload")
    stores = ObjectStores(peer.wrong_config)
    if peer.store == "gcs":
        # fake-gcs-server checks no credential, so the wrong one here is a service account the client
        # cannot use; it is refused before any request (a real GCS 401/403 maps as for the others).
        with pytest.raises(ObjectRefused, match="Google Cloud Storage is not configured for inputs") as caught:
            stores.get(url)
    else:
        with pytest.raises(ObjectRefused, match="access denied by .* for inputs") as caught:
            stores.get(url)
        with pytest.raises(ObjectRefused, match="access denied"):
            stores.put(peer.url("secret/b.dcm", "results"), b"x")
        assert peer.fetch("secret/b.dcm") is None
    message = str(caught.value)
    assert not caught.value.retryable
    for secret in _secrets(peer.wrong_section) + _secrets(peer.section):
        assert secret not in message and secret not in repr(peer.wrong_config)


def _secrets(section: dict[str, dict[str, object]]) -> list[str]:
    keys = ("account_key", "secret_access_key", "service_account_key", "sas_token", "connection_string")
    return [str(v) for values in section.values() for k, v in values.items() if k in keys]


def test_a_store_that_is_down_is_a_retryable_error(peer: ObjectPeer, listener: _Listener) -> None:
    port = listener.port
    listener.close()  # nothing listens there now: connection refused
    section = {store: {**values, "endpoint": f"http://127.0.0.1:{port}" + (
        "/devstoreaccount1" if store == "azure" else "")} for store, values in peer.section.items()}
    with pytest.raises(ObjectStoreError) as caught:
        ObjectStores(ObjectsConfig.model_validate(section)).get(peer.url("a.dcm"))
    assert caught.value.retryable and type(caught.value) is ObjectStoreError


def test_the_running_node_holds_the_service_its_config_describes(start_node: Callable[..., Node],
                                                                 s3_server: ObjectPeer) -> None:
    node = start_node(objects=s3_server.section)
    url = s3_server.seed("node/in.dcm", b"through the node")
    assert isinstance(node.objects, ObjectStores)
    assert node.objects.get(url) == b"through the node"
    node.objects.put(s3_server.url("node/out.dcm", "results"), b"result")
    assert s3_server.fetch("node/out.dcm") == b"result"


def test_a_store_that_accepts_and_never_answers_times_out(peer: ObjectPeer) -> None:
    held: list[socket.socket] = []
    server = socket.create_server(("127.0.0.1", 0))
    accepting = threading.Thread(target=lambda: held.append(server.accept()[0]), daemon=True)
    accepting.start()
    port = server.getsockname()[1]
    section = {store: {**values, "endpoint": f"http://127.0.0.1:{port}" + (
        "/devstoreaccount1" if store == "azure" else "")} for store, values in peer.section.items()}
    stores = ObjectStores(ObjectsConfig.model_validate({**section, "timeout": 1.0}))
    try:
        with pytest.raises(ObjectStoreError) as caught:
            stores.get(peer.url("stalled.dcm"))
        assert caught.value.retryable
    finally:
        for conn in held:
            conn.close()
        server.close()
