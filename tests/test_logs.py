"""Structured logs: key=value lines stay as they are; JSON lines carry the message's fields as members."""

from __future__ import annotations

import json
import logging
import sys

from dicom_node.logs import JsonFormatter, KeyValueFormatter, PhiFilter, message_fields


def _record(msg: str, *args: object, level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord("dicom_node.scp", level, __file__, 1, msg, args, None)


def test_json_line_has_the_message_fields_as_members() -> None:
    record = _record("series assembled series_uid=%s calling_ae=%s instances=%d", "1.2.3.4", "MODALITY", 12)
    doc = json.loads(JsonFormatter().format(record))
    assert doc["series_uid"] == "1.2.3.4"
    assert doc["calling_ae"] == "MODALITY"
    assert doc["instances"] == 12
    assert doc["level"] == "INFO"
    assert doc["logger"] == "dicom_node.scp"
    assert doc["message"] == "series assembled series_uid=1.2.3.4 calling_ae=MODALITY instances=12"
    assert isinstance(doc["ts"], float)


def test_quoted_values_and_reserved_names() -> None:
    fields = message_fields('job failed job_id=7 error="no backend: onnx \\"cpu\\"" ratio=0.5 level=3')
    assert fields == {"job_id": 7, "error": 'no backend: onnx "cpu"', "ratio": 0.5, "level": 3}
    doc = json.loads(JsonFormatter().format(_record("odd level=3 logger=x")))
    assert doc["level"] == "INFO" and doc["level_"] == 3 and doc["logger_"] == "x"


def test_prose_with_equals_inside_a_token_is_not_a_field() -> None:
    # "a.b=c" is a dotted word, not a field; a URL query keeps its place in the prose.
    assert message_fields("see x.y=1 url=http://h/p?q=1") == {"url": "http://h/p?q=1"}


def test_key_value_format_is_unchanged() -> None:
    line = KeyValueFormatter().format(_record("stored sop_uid=%s", "1.2.3"))
    assert line.endswith(' level=INFO logger=dicom_node.scp msg="stored sop_uid=1.2.3"')
    assert line.startswith("ts=")


def test_phi_filter_still_applies_before_json() -> None:
    record = _record("dataset PatientName=%s", "DOE^JOHN")
    assert PhiFilter().filter(record)
    doc = json.loads(JsonFormatter().format(record))
    assert "DOE" not in json.dumps(doc) and "PatientName" not in doc


def test_exception_is_a_member() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed job_id=%d", (3,), sys.exc_info())
    doc = json.loads(JsonFormatter().format(record))
    assert doc["job_id"] == 3 and "ValueError: boom" in doc["exc"]
