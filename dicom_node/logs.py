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
import threading
import time
from types import TracebackType
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


_TRACEBACK_WITHHELD = " (traceback withheld: it may contain patient identifiers)"


class PhiFilter(logging.Filter):
    """Replace any record that mentions patient identifiers, in its message or its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except (TypeError, ValueError):
            return True
        if _PHI_RE.search(text):
            record.msg, record.args = _REDACTED, None
            record.exc_info, record.exc_text = None, None
        elif record.exc_info and _PHI_RE.search(logging.Formatter().formatException(record.exc_info)):
            # An exception's message may quote a dataset (a library's repr): keep the line, drop the traceback.
            record.msg, record.args = text + _TRACEBACK_WITHHELD, None
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


_thread_log = logging.getLogger("dicom_node.threads")


def _thread_excepthook(args: threading.ExceptHookArgs) -> None:
    """Log an exception that ended a thread: one ERROR record, never raw text on stderr."""
    if args.exc_type is SystemExit:
        return  # threading's own hook ignores it too
    name = args.thread.name if args.thread is not None else "unknown"
    exc_info = (args.exc_type, args.exc_value, args.exc_traceback) if args.exc_value is not None else None
    _thread_log.error("uncaught exception ended a thread thread=%s error=%s", name, args.exc_type.__name__,
                      exc_info=exc_info)


def _excepthook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    """Log an exception that ends the main thread: one ERROR record (an interrupt is one INFO line)."""
    if issubclass(exc_type, KeyboardInterrupt):
        _thread_log.info("interrupted thread=%s", threading.current_thread().name)
        return
    _thread_log.error("uncaught exception thread=%s error=%s", threading.current_thread().name, exc_type.__name__,
                      exc_info=(exc_type, exc, tb))


def install_exception_hooks() -> None:
    """Route uncaught exceptions of every thread through the log (its format and PHI filter).

    Without this, Python prints ``Exception in thread ...`` and a traceback
    straight to stderr, outside the structured log and the PHI filter.
    """
    threading.excepthook = _thread_excepthook
    sys.excepthook = _excepthook


def setup_logging(config: LogSettings) -> None:
    """Configure the root logger once for the process (the CLI calls this) and install the exception hooks."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if config.format == "json" else KeyValueFormatter())
    handler.addFilter(PhiFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.level)
    # pynetdicom logs whole datasets at DEBUG, highdicom every module it copies at INFO.
    for noisy in ("pynetdicom", "highdicom"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    install_exception_hooks()
    # warnings.warn (pydicom warns about odd values) would print to stderr outside the log.
    logging.captureWarnings(True)
