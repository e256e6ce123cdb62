"""RetrievalSink.store_staged: a part is consumed once; handing it over again is refused, not crashed on."""

from __future__ import annotations

from pathlib import Path

from tests.receiver import multipart_related


def test_a_part_handed_over_twice_is_refused_with_0xC000(start_node, ct_series: list[Path]) -> None:
    """The first hand-over consumes the staged file; the second gets a status, and nothing else changes.

    Typing the part as :class:`~dicom_node.staging.Part` (it was ``Any``) showed that a part
    without a staged file could reach the ingestor with ``fd=None``.
    """
    from dicom_node.sources.sink import CANNOT_UNDERSTAND, RetrievalSink
    from dicom_node.staging import Part10Reader

    node = start_node(api={"enabled": False})
    boundary = "b0undary"
    body, _ = multipart_related([ct_series[0].read_bytes()], boundary)
    reader = Part10Reader(boundary, node.spool, 10, 1 << 30, "orthanc")
    reader.feed(body)
    reader.close()
    (part,) = reader.take()
    with RetrievalSink(node, "orthanc", "dicomweb:orthanc") as sink:
        first = sink.store_staged(part)
        second = sink.store_staged(part)
    assert first.status == 0 and first.outcome == "stored"
    assert second.status == CANNOT_UNDERSTAND and second.reason == "part has no staged data"
    assert node.index.counts()["instances"] == 1
    assert not list(node.spool.tmp.iterdir())
