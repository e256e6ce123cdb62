"""Generate the DEMO image-text embedding model: ``model.onnx``, ``text.onnx`` and ``tokenizer.json``.

A demo, not a medical model: every weight is drawn from a fixed seed (no
training), so the vectors are deterministic but carry no meaning. It exists so
the node's Vertex-style predict can be exercised end to end in the two response
shapes of Google's Health AI Developer Foundations
(https://developers.google.com/health-ai-developer-foundations/cxr-foundation/serving-api,
https://developers.google.com/health-ai-developer-foundations/derm-foundation/serving-api),
and so that micro-batching has real work to batch.

Image tower (``model.onnx``), input ``image`` ``[N, 1, 224, 224]`` float32 (gray,
normalised to about [-1, 1] by the spec): four 3x3 stride-2 convolutions with
ReLU (1 -> 16 -> 32 -> 64 -> 128 channels, about 45 M multiply-adds per image),
global average pooling, then two heads: ``general_img_emb`` ``[N, 256]`` and
``contrastive_img_emb`` ``[N, 128]`` (L2-normalised).

Text tower (``text.onnx``), input ``input_ids`` ``[N, 32]`` int64, padded with
0: an embedding bag (mean of the token vectors, padding masked out), a linear
layer and L2 normalisation: ``contrastive_txt_emb`` ``[N, 128]``, comparable by
dot product with ``contrastive_img_emb``.

Weights are stored as float16 and cast to float32 inside the graph (ONNX
Runtime folds the casts at load), which keeps ``model.onnx`` about 300 KB.
``tokenizer.json`` is a WordPiece tokenizer (Hugging Face ``tokenizers``) over a
small vocabulary: special tokens, single characters and their ``##``
continuations (so any word tokenizes), punctuation and common radiology words.

Run ``python engines/demo-image-text/make_model.py [out_dir]``; the output is
byte-identical on every run. ``engines/demo-image-embedding`` serves the same
image tower in Derm Foundation's shape (``embedding``, no text tower).
"""

from __future__ import annotations

import string
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
SEED = 16
IMAGE_SIZE = 224
CHANNELS = (1, 16, 32, 64, 128)
GENERAL_DIM = 256
CONTRASTIVE_DIM = 128
TEXT_DIM = 64
MAX_TOKENS = 32
SPECIALS = ["[PAD]", "[UNK]"]
WORDS = """
a an and are as at be both by chest clear consolidation no normal of on or the there to with without
abnormal abnormality acute air airspace apex apical atelectasis base basal bibasilar bilateral blunting
bone bones cardiac cardiomediastinal cardiomegaly catheter collapse congestion costophrenic density
device devices diaphragm disease edema effusion effusions emphysema enlarged enlargement fibrosis
finding findings fluid fracture fractures granuloma heart hernia hilar infiltrate interstitial left
lesion line lobe lower lung lungs mass mediastinal mediastinum middle mild moderate nodule nodules
opacity opacities pacemaker pleural pneumonia pneumothorax pulmonary right rib ribs severe silhouette
size small spine stable thickening tube upper vascular volume volumes widened
skin lesion melanoma nevus mole rash eczema psoriasis dermatitis acne benign malignant pigmented
x-ray radiograph image view frontal lateral portable supine upright
""".split()


def vocabulary() -> dict[str, int]:
    """Token -> id: specials first (``[PAD]`` = 0), then characters, continuations, punctuation and words."""
    chars = string.ascii_lowercase + string.digits
    tokens = [*SPECIALS, *chars, *(f"##{c}" for c in chars), *string.punctuation]
    for word in WORDS:
        if word not in tokens:
            tokens.append(word)
    return {tok: i for i, tok in enumerate(tokens)}


def tokenizer_json(vocab: dict[str, int]) -> str:
    """The WordPiece tokenizer as ``tokenizers`` serialises it (BERT normalisation and pre-tokenisation)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]", max_input_chars_per_word=64))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True, clean_text=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tok.to_str(pretty=True)


class Weights:
    """Float16 initializers from one seeded generator, each cast to float32 in the graph."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.initializers: list[onnx.TensorProto] = []
        self.nodes: list[onnx.NodeProto] = []

    def he(self, name: str, shape: tuple[int, ...], fan_in: int) -> str:
        """He-normal weights (std = sqrt(2 / fan_in)) as float16, exposed as a float32 tensor ``name``."""
        value = (self.rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float16)
        self.initializers.append(numpy_helper.from_array(value, f"{name}_f16"))
        self.nodes.append(helper.make_node("Cast", [f"{name}_f16"], [name], to=TensorProto.FLOAT))
        return name

    def const(self, name: str, value: np.ndarray) -> str:
        """A constant stored as is."""
        self.initializers.append(numpy_helper.from_array(value, name))
        return name


def _l2_normalize(w: Weights, nodes: list[onnx.NodeProto], x: str, out: str) -> None:
    eps = w.const(f"{out}_eps", np.array(1e-6, dtype=np.float32))
    nodes += [
        helper.make_node("ReduceL2", [x], [f"{out}_norm"], axes=[1], keepdims=1),
        helper.make_node("Max", [f"{out}_norm", eps], [f"{out}_safe"]),
        helper.make_node("Div", [x, f"{out}_safe"], [out]),
    ]


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="dicom-node demo")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def build_image() -> onnx.ModelProto:
    """The image tower (see the module docstring)."""
    w = Weights(SEED)
    nodes: list[onnx.NodeProto] = []
    x = "image"
    for i, (cin, cout) in enumerate(zip(CHANNELS[:-1], CHANNELS[1:], strict=True)):
        kernel = w.he(f"conv{i}_w", (cout, cin, 3, 3), cin * 9)
        bias = w.const(f"conv{i}_b", np.zeros(cout, dtype=np.float32))
        nodes += [helper.make_node("Conv", [x, kernel, bias], [f"conv{i}"], kernel_shape=[3, 3], strides=[2, 2],
                                   pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"])]
        x = f"relu{i}"
    nodes += [helper.make_node("GlobalAveragePool", [x], ["pooled4d"]),
              helper.make_node("Flatten", ["pooled4d"], ["pooled"], axis=1)]
    general = w.he("general_w", (CHANNELS[-1], GENERAL_DIM), CHANNELS[-1])
    contrastive = w.he("contrastive_w", (CHANNELS[-1], CONTRASTIVE_DIM), CHANNELS[-1])
    nodes += [helper.make_node("MatMul", ["pooled", general], ["general_img_emb"]),
              helper.make_node("MatMul", ["pooled", contrastive], ["contrastive_raw"])]
    _l2_normalize(w, nodes, "contrastive_raw", "contrastive_img_emb")
    graph = helper.make_graph(
        w.nodes + nodes, "demo_image_tower",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, IMAGE_SIZE, IMAGE_SIZE])],
        [helper.make_tensor_value_info("general_img_emb", TensorProto.FLOAT, ["N", GENERAL_DIM]),
         helper.make_tensor_value_info("contrastive_img_emb", TensorProto.FLOAT, ["N", CONTRASTIVE_DIM])],
        w.initializers,
    )
    return _model(graph)


def build_text(vocab_size: int) -> onnx.ModelProto:
    """The text tower: masked mean of token vectors, a linear layer, L2 normalisation."""
    w = Weights(SEED + 1)
    table = w.he("token_table", (vocab_size, TEXT_DIM), TEXT_DIM)
    project = w.he("text_w", (TEXT_DIM, CONTRASTIVE_DIM), TEXT_DIM)
    pad = w.const("pad_id", np.array(0, dtype=np.int64))
    one = w.const("one", np.array(1.0, dtype=np.float32))
    nodes = [
        helper.make_node("Gather", [table, "input_ids"], ["tokens"], axis=0),  # [N, T, D]
        helper.make_node("Equal", ["input_ids", pad], ["is_pad"]),
        helper.make_node("Not", ["is_pad"], ["is_token"]),
        helper.make_node("Cast", ["is_token"], ["mask2d"], to=TensorProto.FLOAT),  # [N, T]
        helper.make_node("Unsqueeze", ["mask2d", w.const("axis2", np.array([2], dtype=np.int64))], ["mask"]),
        helper.make_node("Mul", ["tokens", "mask"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", w.const("axis1", np.array([1], dtype=np.int64))], ["summed"],
                         keepdims=0),
        helper.make_node("ReduceSum", ["mask2d", "axis1"], ["count"], keepdims=1),
        helper.make_node("Max", ["count", one], ["count_safe"]),
        helper.make_node("Div", ["summed", "count_safe"], ["mean"]),
        helper.make_node("MatMul", ["mean", project], ["text_raw"]),
    ]
    _l2_normalize(w, nodes, "text_raw", "contrastive_txt_emb")
    graph = helper.make_graph(
        w.nodes + nodes, "demo_text_tower",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["N", MAX_TOKENS])],
        [helper.make_tensor_value_info("contrastive_txt_emb", TensorProto.FLOAT, ["N", CONTRASTIVE_DIM])],
        w.initializers,
    )
    return _model(graph)


def write(out: Path) -> None:
    """Write ``model.onnx``, ``text.onnx`` and ``tokenizer.json`` into ``out``."""
    vocab = vocabulary()
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.onnx").write_bytes(build_image().SerializeToString())
    (out / "text.onnx").write_bytes(build_text(len(vocab)).SerializeToString())
    (out / "tokenizer.json").write_text(tokenizer_json(vocab) + "\n", encoding="utf-8")


def main(argv: list[str]) -> int:
    """Write the model files next to this script, or into ``argv[1]`` when given."""
    write(Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
