"""Generate ``model.onnx`` for ``ct-lungs``: air-density regions inside the body on CT.

Run ``python engines/ct-lungs/make_model.py``; the output is byte-identical on
every run. The body part of the graph is the one of ``ct-body`` (imported from
``../ct-body/make_model.py``), so the two models agree on what "inside" means.

Input ``ct`` ``[N, 1, H, W]`` in HU, windowed inside the graph as for ct-body:
``v = clip((HU + 1000) / 2000, 0, 1)``.
Algorithm, per slice:

1. body = the ct-body mask;
2. core = body eroded by a 5x5 square, so the partial-volume air at the skin
   and the air outside it never count;
3. air = v < 0.3, i.e. HU < -400 (aerated lung, airway, gas);
4. lungs = opening(air AND core) with a 3x3 square, which drops isolated
   noise pixels.

One label only: density alone cannot separate lung parenchyma from airway
(emphysema is as dark as the trachea) nor from bowel gas below the diaphragm;
splitting into two labels by a density cut would name regions it cannot know.
Output ``lungs`` ``[N, 1, H, W]`` is 1.0 in air-density regions inside the body.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import onnx

AIR_THRESHOLD = 0.3  # v < 0.3 <=> HU < -400
CORE_RADIUS = 2
CLEAN_RADIUS = 1


def _body_module() -> ModuleType:
    path = Path(__file__).resolve().parent.parent / "ct-body" / "make_model.py"
    spec = importlib.util.spec_from_file_location("ct_body_make_model", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build() -> onnx.ModelProto:
    """Return the ct-lungs model."""
    body_mod = _body_module()
    g = body_mod.GraphBuilder("lungs/")
    v = g.window("ct")
    core = g.erode(g.body(v), CORE_RADIUS)
    air = g.threshold(v, AIR_THRESHOLD, greater=False)
    inside = g.op("Mul", [air, core], "air_inside")
    lungs = g.dilate(g.erode(inside, CLEAN_RADIUS), CLEAN_RADIUS)
    return body_mod.finish(g, lungs, "ct", "lungs", "ct_lungs")


def main(argv: list[str]) -> int:
    """Write the model next to this script, or to ``argv[1]`` when given."""
    out = Path(argv[1]) if len(argv) > 1 else Path(__file__).with_name("model.onnx")
    out.write_bytes(build().SerializeToString())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
