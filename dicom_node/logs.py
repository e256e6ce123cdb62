"""Structured logging (key=value or JSON) with a guard against patient identifiers.

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

from dicom_node.config import LoggingConfig

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


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": record.created,
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def setup_logging(config: LoggingConfig) -> None:
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
