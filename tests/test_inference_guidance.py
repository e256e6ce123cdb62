"""``[guidance]`` models (issue 17): point maps reach the network as channels after the image, in 2D and 3D.

The convention is DeepGrow's and DExtr3D's (MONAI ``AddGuidanceSignal``: the image, then one
map per kind of click). Each test model here passes one input channel through unchanged, so the
output shows exactly what the predictor fed that channel, through slicing (2D) or sliding-window
tiling, edge padding and blending (3D).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from inference.backends import BackendOptions
from inference.errors import InputError, SpecError
from inference.predictor import open_predictor
from inference.spec import load_spec
from inference.store import ModelEntry

LABEL = '[[labels]]\nchannel = 0\nname = "Guided"\ncategory = { value = "91723000", meaning = "Anatomical structure" }\n' \
        'type = { value = "91723000", meaning = "Anatomical structure" }\n'


def channel_model(tmp_path: Path, mode: str, channel: int) -> ModelEntry:
    """A model whose output is input channel ``channel`` (of image, foreground, background)."""
    folder = tmp_path / f"pass-{mode}-{channel}"
    folder.mkdir()
    dims = ["N", 3, "H", "W"] if mode == "2d" else ["N", 3, "D", "H", "W"]
    out_dims = ["N", 1, *dims[2:]]
    inits = [numpy_helper.from_array(np.array([v], np.int64), n)
             for n, v in (("s", channel), ("e", channel + 1), ("a", 1))]
    graph = helper.make_graph([helper.make_node("Slice", ["x", "s", "e", "a"], ["y"])], "pass",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_dims)], initializer=inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(folder / "model.onnx"))
    window = 'sliding_window = { roi = [4, 16, 16], overlap = 0.5, blend = "gaussian" }' if mode == "3d" else ""
    in_dims = "[3, -1, -1]" if mode == "2d" else "[3, 4, 16, 16]"
    out = "[1, -1, -1]" if mode == "2d" else "[1, 4, 16, 16]"
    (folder / "model.toml").write_text(f"""
name = "pass-{mode}-{channel}"
version = "1"
task = "segmentation"
[preprocessing]
mode = "{mode}"
{window}
[tensors]
max_batch = 4
inputs = [{{ name = "x", dims = {in_dims} }}]
outputs = [{{ name = "y", dims = {out} }}]
[postprocessing]
decision = "none"
[guidance]
sigma = 2.0
{LABEL}""")
    return ModelEntry(spec=load_spec(folder / "model.toml"), directory=folder)


@pytest.mark.parametrize("mode", ["2d", "3d"])
@pytest.mark.parametrize("channel", [1, 2])
def test_guidance_maps_reach_their_channel(tmp_path: Path, mode: str, channel: int) -> None:
    predictor = open_predictor(channel_model(tmp_path, mode, channel), BackendOptions(), ["onnxruntime"])
    try:
        shape = (6, 20, 23)  # not a multiple of the 3D roi: tiles overlap and the last ones are padded
        guidance = np.random.default_rng(channel).random((2, *shape)).astype(np.float32)
        volume = np.full(shape, 40.0, np.float32)
        got = predictor.predict(volume, {}, guidance).result
        got = got[:, 0] if mode == "2d" else got[0, 0]
        np.testing.assert_allclose(got, guidance[channel - 1], atol=1e-5)
        with pytest.raises(InputError, match="guidance maps of shape"):
            predictor.predict(volume, {}, None)
    finally:
        predictor.close()


def test_guidance_table_must_match_the_input_channels(tmp_path: Path) -> None:
    entry = channel_model(tmp_path, "2d", 1)
    text = (entry.directory / "model.toml").read_text().replace("[3, -1, -1]", "[2, -1, -1]")
    (entry.directory / "model.toml").write_text(text)
    with pytest.raises(SpecError, match=r"tensors.inputs\[0\].dims\[0\] = 3"):
        load_spec(entry.directory / "model.toml")
