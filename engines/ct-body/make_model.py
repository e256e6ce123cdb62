"""Generate ``model.onnx`` for ``ct-body``: patient body segmentation on CT.

Run ``python engines/ct-body/make_model.py`` to regenerate; the output is
byte-identical on every run (a test checks it), so the committed ONNX file is
reproducible from this script alone. No weights are learned: the network is
classic image processing written as ONNX operators, so any backend that runs
ONNX (ONNX Runtime, TensorRT, Triton) runs the same algorithm.

Input ``ct`` is a batch of axial slices ``[N, 1, H, W]`` in Hounsfield units.
The window (centre 0 HU, width 2000 HU) is the first operation of the graph,
``v = clip((HU + 1000) / 2000, 0, 1)``, not a NumPy pre-processing step: ONNX
Runtime runs it multi-threaded and fused, TensorRT on the GPU, and Triton
clients can send HU as stored. Algorithm, per slice:

1. tissue = v > 0.25, i.e. HU > -500 (soft tissue, bone; not air or lung);
2. morphological opening with a 5x5 square (erosion then dilation; ``MaxPool``
   of the negated / plain mask) removes noise specks and thin objects such as
   the couch and blanket edges;
3. enclosure fill: a pixel is body when opened tissue lies on all four sides of
   it along its row and column (``CumSum`` forwards and backwards > 0). This
   fills the lungs, airway and bowel gas enclosed by the body wall. It also
   fills concavities enclosed on four sides (e.g. between arms and torso),
   which is the documented limit of this model.

Output ``body`` ``[N, 1, H, W]`` is 1.0 inside the body, 0.0 elsewhere.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
WINDOW_CENTER = 0.0
WINDOW_WIDTH = 2000.0
#: v = (HU + 1000) / 2000; 0.25 <=> -500 HU.
TISSUE_THRESHOLD = 0.25
OPEN_RADIUS = 2


class GraphBuilder:
    """Collects nodes and constants with unique, readable names."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def name(self, hint: str) -> str:
        """Return a fresh tensor name."""
        self._count += 1
        return f"{self.prefix}{hint}_{self._count}"

    def const(self, hint: str, value: np.ndarray) -> str:
        """Add a constant initializer and return its name."""
        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(value, name=name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str, **attrs: object) -> str:
        """Add one node with a single output and return the output's name."""
        out = self.name(hint)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def dilate(self, mask: str, radius: int) -> str:
        """Binary dilation with a (2r+1)^2 square; pixels outside the image are ignored."""
        k = 2 * radius + 1
        return self.op("MaxPool", [mask], "dilate", kernel_shape=[k, k], pads=[radius] * 4, strides=[1, 1])

    def erode(self, mask: str, radius: int) -> str:
        """Binary erosion as -dilate(-mask); MaxPool pads with -inf, so edges only see the image."""
        neg = self.op("Neg", [mask], "neg")
        return self.op("Neg", [self.dilate(neg, radius)], "erode")

    def threshold(self, x: str, value: float, greater: bool) -> str:
        """Return the float mask ``x > value`` (or ``x < value``)."""
        t = self.const("thr", np.array(value, dtype=np.float32))
        cmp = self.op("Greater" if greater else "Less", [x, t], "cmp")
        return self.op("Cast", [cmp], "mask", to=TensorProto.FLOAT)

    def enclosed(self, mask: str) -> str:
        """Float mask of pixels with ``mask`` on all four sides along their row and column."""
        zero = self.const("zero", np.array(0.0, dtype=np.float32))
        sides = []
        for axis in (2, 3):
            ax = self.const("axis", np.array(axis, dtype=np.int64))
            for reverse in (0, 1):
                csum = self.op("CumSum", [mask, ax], "cumsum", reverse=reverse)
                sides.append(self.op("Greater", [csum, zero], "side"))
        both_rows = self.op("And", [sides[0], sides[1]], "rows")
        both_cols = self.op("And", [sides[2], sides[3]], "cols")
        inside = self.op("And", [both_rows, both_cols], "inside")
        return self.op("Cast", [inside], "enclosed", to=TensorProto.FLOAT)

    def window(self, hu: str) -> str:
        """``clip((hu - (center - width/2)) / width, 0, 1)`` for centre 0 HU, width 2000 HU."""
        low = self.const("low", np.array(WINDOW_CENTER - WINDOW_WIDTH / 2, dtype=np.float32))
        inv = self.const("inv_width", np.array(1.0 / WINDOW_WIDTH, dtype=np.float32))
        zero = self.const("zero", np.array(0.0, dtype=np.float32))
        one = self.const("one", np.array(1.0, dtype=np.float32))
        shifted = self.op("Sub", [hu, low], "shifted")
        scaled = self.op("Mul", [shifted, inv], "scaled")
        return self.op("Clip", [scaled, zero, one], "windowed")

    def body(self, x: str) -> str:
        """The ct-body algorithm (module docstring) on windowed input ``x``."""
        tissue = self.threshold(x, TISSUE_THRESHOLD, greater=True)
        opened = self.dilate(self.erode(tissue, OPEN_RADIUS), OPEN_RADIUS)
        return self.enclosed(opened)


def finish(builder: GraphBuilder, result: str, in_name: str, out_name: str, graph_name: str) -> onnx.ModelProto:
    """Wrap the builder's nodes into a checked model with dynamic N, H, W."""
    builder.nodes.append(helper.make_node("Identity", [result], [out_name], name=f"{out_name}_out"))
    dims = ["N", 1, "H", "W"]
    graph = helper.make_graph(
        builder.nodes,
        graph_name,
        [helper.make_tensor_value_info(in_name, TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, dims)],
        initializer=builder.initializers,
    )
    model = helper.make_model(
        graph,
        producer_name="dicom-node",
        producer_version="1",
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def build() -> onnx.ModelProto:
    """Return the ct-body model."""
    builder = GraphBuilder("body/")
    return finish(builder, builder.body(builder.window("ct")), "ct", "body", "ct_body")


def main(argv: list[str]) -> int:
    """Write the model next to this script, or to ``argv[1]`` when given."""
    out = Path(argv[1]) if len(argv) > 1 else Path(__file__).with_name("model.onnx")
    out.write_bytes(build().SerializeToString())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
