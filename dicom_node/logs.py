"""Structured logging (key=value or JSON) with a guard against patient identifiers.

Messages are written as prose followed by ``key=value`` fields
(``"job done series_uid=%s calling_ae=%s"``); the JSON formatter turns those fields
into JSON members, so a log pipeline can filter on ``series_uid`` without parsing text.

Our own messages never carry patient attributes; the guard is a second line of
defence for third-party messages (a library logging a whole dataset): any record
mentioning a patient-identifying keyword or tag is reduced to its logger name.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Protocol

#: One ``key=value`` field of a message: a bare token or a double-quoted string.
_FIELD_RE = re.compile(r'(?<![\w.])([A-Za-z_][A-Za-z0-9_]*)=("(?:[^"\\]|\\.)*"|[^\s"]*)')
_INT_RE = re.compile(r"-?(?:0|[1-9][0-9]*)")
_FLOAT_RE = re.compile(r"-?(?:0|[1-9][0-9]*)\.[0-9]+")
#: Members every JSON line has; a message field of the same name is written with a trailing underscore.
_RESERVED = frozenset({"ts", "level", "logger", "message", "exc"})

_PHI_RE = re.compile(
    r"Patient(?:'s)?\s*(?:Name|ID|Birth\s*Date)|PatientName|PatientID|PatientBirthDate|"
    r"\(0010,\s*00(?:10|20|30)\)|00100010|00100020|00100030",
    re.IGNORECASE,
)
_REDACTED = "[message withheld: it may contain patient identifiers]"


class PhiFilter(logging.Filter):
    """Replace any record that mentions patient identifiers."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except (TypeError, ValueError):
            return True
        if _PHI_RE.search(text):
            record.msg, record.args = _REDACTED, None
            record.exc_info, record.exc_text = None, None
        return True


class KeyValueFormatter(logging.Formatter):
    """``ts=... level=... logger=... msg="..."`` lines."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        line = f'ts={ts} level={record.levelname} logger={record.name} msg="{record.getMessage()}"'
        if record.exc_info:
            line += " exc=" + json.dumps(self.formatException(record.exc_info))
        return line


def _value(text: str) -> str | int | float:
    """A field's value: unquoted, and a number when it is written as one (``count=3``)."""
    if text.startswith('"') and text.endswith('"') and len(text) >= 2:
        try:
            return str(json.loads(text))
        except ValueError:
            return text[1:-1]
    if _INT_RE.fullmatch(text):
        return int(text)
    if _FLOAT_RE.fullmatch(text):
        return float(text)
    return text


def message_fields(message: str) -> dict[str, str | int | float]:
    """The ``key=value`` fields of a log message, in order (a repeated key keeps its last value)."""
    return {key: _value(raw) for key, raw in _FIELD_RE.findall(message)}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``message``, then the message's fields."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        doc: dict[str, str | int | float] = {
            "ts": record.created,
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        for key, value in message_fields(message).items():
            doc[key + "_" if key in _RESERVED else key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc)


class LogSettings(Protocol):
    """What :func:`setup_logging` reads (``dicom_node.config.LoggingConfig``).

    A protocol so that this bottom-layer module does not import the config package.
    """

    @property
    def level(self) -> str: ...

    @property
    def format(self) -> str: ...


def setup_logging(config: LogSettings) -> None:
    """Configure the root logger once for the process (the CLI calls this)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if config.format == "json" else KeyValueFormatter())
    handler.addFilter(PhiFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.level)
    # pynetdicom logs whole datasets at DEBUG, highdicom every module it copies at INFO.
    for noisy in ("pynetdicom", "highdicom"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
