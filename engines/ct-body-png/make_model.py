"""Generate ``model.onnx`` for ``ct-body-png``: ct-body for CT slices sent as 8-bit images.

The network is ct-body's, built by ``engines/ct-body/make_model.py`` (the same
bytes; a test checks both regenerate identically). What differs is the spec:
the input is an 8-bit gray image rendered with the window centre 0 HU, width
2000 HU (gray = 255 * clip((HU + 1000) / 2000, 0, 1)); preprocessing maps gray
back to HU with ``(gray - 127.5) / 0.1275`` before the graph's own window.
Images rendered with any other window give wrong masks: the window is part of
this model's input contract (see ``model.toml``).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_CT_BODY = Path(__file__).resolve().parents[1] / "ct-body" / "make_model.py"


def main(argv: list[str]) -> int:
    """Write the model next to this script, or to ``argv[1]`` when given."""
    spec = importlib.util.spec_from_file_location("ct_body_make_model", _CT_BODY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = Path(argv[1]) if len(argv) > 1 else Path(__file__).with_name("model.onnx")
    out.write_bytes(module.build().SerializeToString())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
