"""No thread prints outside the log: uncaught exceptions become one ERROR record, PHI-filtered.

Each case runs in a fresh interpreter that configures logging the way
``dicom-node serve`` does (:func:`dicom_node.logs.setup_logging`), so stderr is
exactly what an operator would see and no hook leaks into this test process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

SETUP = """
from dicom_node.config import LoggingConfig
from dicom_node.logs import setup_logging
setup_logging(LoggingConfig(format={fmt!r}))
"""


def run(body: str, fmt: str = "keyvalue") -> str:
    code = SETUP.format(fmt=fmt) + textwrap.dedent(body)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    return proc.stderr


THREAD = """
import threading
def boom():
    raise ValueError({message!r})
t = threading.Thread(target=boom, name="assoc-1234abcd")
t.start(); t.join()
"""


def test_thread_exception_is_one_error_record() -> None:
    """Issue 14: a dying association thread printed ``Exception in thread assoc-...`` outside the log."""
    err = run(THREAD.format(message="bad item length"))
    assert "Exception in thread" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "level=ERROR" in lines[0] and "thread=assoc-1234abcd" in lines[0] and "error=ValueError" in lines[0]
    assert "exc=" in lines[0], "the traceback goes through the log's handler, on the same line"


def test_thread_exception_in_json_has_the_fields() -> None:
    err = run(THREAD.format(message="bad item length"), fmt="json")
    record = json.loads(err.strip())
    assert (record["level"], record["thread"], record["error"]) == ("ERROR", "assoc-1234abcd", "ValueError")
    assert "Traceback" in record["exc"]


def test_thread_exception_quoting_patient_data_keeps_no_traceback() -> None:
    err = run(THREAD.format(message="(0010,0010) PatientName=DOE^JANE"))
    assert "DOE^JANE" not in err and "Exception in thread" not in err, err
    assert err.count("level=ERROR") == 1 and "traceback withheld" in err


@pytest.mark.parametrize("fmt", ["keyvalue", "json"])
def test_main_thread_exception_and_warnings_go_through_the_log(fmt: str) -> None:
    err = run("""
        import warnings
        warnings.warn("odd value")
        raise RuntimeError("at start-up")
    """, fmt=fmt)
    lines = err.strip().splitlines()
    assert not any(line.startswith(("Traceback", "  File", "RuntimeError")) for line in lines), err
    assert sum("RuntimeError" in line and "ERROR" in line for line in lines) == 1, err
    assert any("py.warnings" in line and "odd value" in line for line in lines), err
