"""RetrievalSink: pulled instances take the durable C-STORE path and complete their series."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from tests.conftest import wait_for
from tests.receiver import multipart_related


def test_part10_bytes_are_stored_indexed_and_complete_the_series(start_node, ct_series: list[Path]) -> None:
    from dicom_node.sources.sink import RetrievalSink

    node = start_node(api={"enabled": False})
    with RetrievalSink(node, "orthanc", "dicomweb:orthanc", "127.0.0.1") as sink:
        for path in ct_series[:-1]:
            data = path.read_bytes()
            # Chunked, as a streamed WADO-RS part arrives.
            outcome = sink.store_part10(data[i:i + 1000] for i in range(0, len(data), 1000))
            assert outcome.status == 0 and outcome.outcome == "stored"
        # The last one as a dataset, as a C-GET sub-operation delivers it.
        ds = pydicom.dcmread(ct_series[-1])
        assert sink.store_dataset(ds).status == 0
        again = sink.store_part10(ct_series[0].read_bytes())
        assert again.status == 0 and again.outcome == "duplicate"
    reader = node.index.reader()
    rows = reader.execute("SELECT sop_instance_uid, source, calling_ae, path FROM instances").fetchall()
    assert len(rows) == len(ct_series)
    assert {r["source"] for r in rows} == {"dicomweb:orthanc"}
    assert {r["calling_ae"] for r in rows} == {"orthanc"}
    for row in rows:
        stored = pydicom.dcmread(node.spool.path_for(row["path"]))
        assert stored.SOPInstanceUID == row["sop_instance_uid"]
        # The file meta names where the instance came from, not the STOW-RS default.
        assert stored.file_meta.SourceApplicationEntityTitle == "orthanc"
    assert wait_for(lambda: node.index.counts()["complete"] == 1, timeout=10)


def test_bad_bytes_get_a_status_and_leave_nothing_behind(start_node, tmp_path: Path) -> None:
    from dicom_node.sources.sink import RetrievalSink

    node = start_node(api={"enabled": False})
    with RetrievalSink(node, "orthanc", "dicomweb:orthanc") as sink:
        outcome = sink.store_part10(b"not a dicom file at all" * 10)
    assert outcome.status != 0 and outcome.reason
    assert node.index.counts()["instances"] == 0
    assert not list((node.spool.tmp).iterdir())


def test_parts_left_when_the_sink_gives_up_are_discarded(start_node, ct_series: list[Path]) -> None:
    """A sink that fails mid-response (closed session, stopping poller) leaves no staged .part files."""
    from dicom_node.errors import StorageError
    from dicom_node.sources.base import RetrieveResult
    from dicom_node.sources.dicomweb import _store_taken
    from dicom_node.sources.sink import RetrievalSink
    from dicom_node.staging import Part10Reader

    node = start_node(api={"enabled": False})
    boundary = "b0undary"
    body, _ = multipart_related([p.read_bytes() for p in ct_series[:3]], boundary)
    reader = Part10Reader(boundary, node.spool, 10, 1 << 30, "orthanc")
    reader.feed(body)
    reader.close()
    parts = reader.take()
    assert len(parts) == 3 and len(list(node.spool.tmp.iterdir())) == 3
    sink = RetrievalSink(node, "orthanc", "dicomweb:orthanc")
    with sink:
        result = RetrieveResult()
        calls = []
        real = sink.store_staged

        def closing(part):  # the session is deleted while the second part is handed over
            calls.append(part)
            if len(calls) == 2:
                sink.close("aborted")
            return real(part)

        sink.store_staged = closing  # type: ignore[method-assign]
        with pytest.raises(StorageError):
            _store_taken(parts, sink, result, node.spool)
    assert len(result.stored) == 1
    assert not list(node.spool.tmp.iterdir())
