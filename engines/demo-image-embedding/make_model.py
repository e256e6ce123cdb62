"""Generate ``model.onnx`` for ``demo-image-embedding``: demo-image-text's image tower, the same bytes.

A DEMO, not a medical model (random weights from a fixed seed; see
``engines/demo-image-text/make_model.py``). Only the spec differs: the answer is
Derm Foundation's ``{"embedding": [...]}``
(https://developers.google.com/health-ai-developer-foundations/derm-foundation/serving-api)
and there is no text tower.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_DEMO = Path(__file__).resolve().parents[1] / "demo-image-text" / "make_model.py"


def main(argv: list[str]) -> int:
    """Write the model next to this script, or to ``argv[1]`` when given."""
    spec = importlib.util.spec_from_file_location("demo_image_text_make_model", _DEMO)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = Path(argv[1]) if len(argv) > 1 else Path(__file__).with_name("model.onnx")
    out.write_bytes(module.build_image().SerializeToString())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
