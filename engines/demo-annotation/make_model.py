"""Generate ``model.onnx`` for ``demo-annotation``: a DEMO interactive annotation model, NOT a medical model.

Run ``python engines/demo-annotation/make_model.py`` to regenerate; the output is byte-identical on
every run (the 7x7 kernel comes from a fixed seed), so the committed ONNX file is reproducible
from this script alone. It exists so that Clara AIAA's ``/v1/dextr3d`` and ``/v1/deepgrow``
(issue 17) run end to end through the node's ``[guidance]`` path; it was trained on nothing.

Input ``image`` ``[N, 3, H, W]``: one axial slice per item, channel 0 in Hounsfield units, then
the ``foreground`` and ``background`` point maps the node builds from the clicks (Gaussians of
peak 1, ``[guidance]`` in model.toml). Per pixel:

1. tissue = HU > -500 (as ct-body: soft tissue and bone, not air or lung);
2. guide = the foreground map minus the background map, blurred by a 7x7 kernel of positive
   weights drawn from ``numpy.random.default_rng(17)`` and normalised to sum 1;
3. ``annotation = sigmoid(40 * (guide - 0.1)) * tissue``: tissue near a foreground click and
   away from a background one.

Output ``annotation`` ``[N, 1, H, W]`` in [0, 1]; model.toml thresholds it at 0.5.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
SEED = 17
KERNEL = 7
TISSUE_HU = -500.0
GUIDE_LEVEL = 0.1
GAIN = 40.0


def kernel() -> np.ndarray:
    """The blur: positive weights from the fixed seed, summing to 1, shape ``[1, 1, 7, 7]``."""
    weights = np.abs(np.random.default_rng(SEED).normal(size=(1, 1, KERNEL, KERNEL))) + 0.5
    return (weights / weights.sum()).astype(np.float32)


def build() -> onnx.ModelProto:
    """Return the demo-annotation model (see the module docstring)."""
    consts = {
        "w": kernel(),
        "tissue_hu": np.array(TISSUE_HU, np.float32),
        "level": np.array(GUIDE_LEVEL, np.float32),
        "gain": np.array(GAIN, np.float32),
        "axis1": np.array([1], np.int64),
    }
    for name, start in (("c0", 0), ("c1", 1), ("c2", 2)):
        consts[f"{name}_start"] = np.array([start], np.int64)
        consts[f"{name}_end"] = np.array([start + 1], np.int64)
    nodes = [
        helper.make_node("Slice", ["image", f"{c}_start", f"{c}_end", "axis1"], [c], name=f"slice_{c}")
        for c in ("c0", "c1", "c2")
    ] + [
        helper.make_node("Greater", ["c0", "tissue_hu"], ["tissue_bool"], name="tissue"),
        helper.make_node("Cast", ["tissue_bool"], ["tissue"], name="tissue_float", to=TensorProto.FLOAT),
        helper.make_node("Sub", ["c1", "c2"], ["guide_raw"], name="guide"),
        helper.make_node("Conv", ["guide_raw", "w"], ["guide"], name="blur", kernel_shape=[KERNEL, KERNEL],
                         pads=[KERNEL // 2] * 4),
        helper.make_node("Sub", ["guide", "level"], ["shifted"], name="shift"),
        helper.make_node("Mul", ["shifted", "gain"], ["scaled"], name="scale"),
        helper.make_node("Sigmoid", ["scaled"], ["near"], name="sigmoid"),
        helper.make_node("Mul", ["near", "tissue"], ["annotation"], name="annotation"),
    ]
    graph = helper.make_graph(
        nodes, "demo_annotation",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("annotation", TensorProto.FLOAT, ["N", 1, "H", "W"])],
        initializer=[numpy_helper.from_array(v, name=k) for k, v in consts.items()],
    )
    model = helper.make_model(graph, producer_name="dicom-node", producer_version="1",
                              opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.checker.check_model(model, full_check=True)
    return model


def main(argv: list[str]) -> int:
    """Write the model next to this script, or to ``argv[1]`` when given."""
    out = Path(argv[1]) if len(argv) > 1 else Path(__file__).with_name("model.onnx")
    out.write_bytes(build().SerializeToString())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
