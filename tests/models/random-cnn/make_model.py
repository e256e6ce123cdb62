"""Generate ``model.onnx`` for ``random-cnn``: a tiny randomly initialised classifier.

A test fixture only (its spec says ``hidden = true``): weights come from a
fixed seed, so the output means nothing but is reproducible, and the same
network run on ONNX Runtime, Triton and TensorRT must agree within float
tolerance. Input ``image`` ``[N, 1, 64, 64]``; output ``logits`` ``[N, 3]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SEED = 20261125
SIZE = 64


def _weights(rng: np.random.Generator) -> dict[str, np.ndarray]:
    def he(shape: tuple[int, ...], fan_in: int) -> np.ndarray:
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    return {
        "conv1.w": he((8, 1, 3, 3), 9),
        "conv1.b": (rng.standard_normal(8) * 0.1).astype(np.float32),
        "conv2.w": he((16, 8, 3, 3), 72),
        "conv2.b": (rng.standard_normal(16) * 0.1).astype(np.float32),
        "fc.w": he((3, 16), 16),
        "fc.b": (rng.standard_normal(3) * 0.1).astype(np.float32),
    }


def build() -> onnx.ModelProto:
    """Return the random CNN."""
    weights = _weights(np.random.default_rng(SEED))
    conv = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    nodes = [
        helper.make_node("Conv", ["image", "conv1.w", "conv1.b"], ["c1"], name="conv1", **conv),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "conv2.w", "conv2.b"], ["c2"], name="conv2", **conv),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten", axis=1),
        helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "random_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        initializer=[numpy_helper.from_array(v, name=k) for k, v in weights.items()],
    )
    model = helper.make_model(
        graph, producer_name="dicom-node", producer_version="1",
        opset_imports=[helper.make_opsetid("", 17)], ir_version=8,
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def main(argv: list[str]) -> int:
    """Write the model next to this script, or to ``argv[1]`` when given."""
    out = Path(argv[1]) if len(argv) > 1 else Path(__file__).with_name("model.onnx")
    out.write_bytes(build().SerializeToString())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
