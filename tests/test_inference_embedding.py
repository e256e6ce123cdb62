"""Embedding models (issue 16): ``[embedding]`` fields, text towers, and the bundled demo image-text model.

The demo's weights come from a fixed seed (``engines/demo-image-text/make_model.py``), so what is
checked is behaviour: shapes, normalisation, determinism, limits named in errors, and that the
committed files are what the script generates.
"""

from __future__ import annotations

import importlib.util
import shutil
import tomllib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from inference.backends import BackendOptions
from inference.errors import InputError, SpecError
from inference.predictor import Predictor, open_predictor
from inference.spec import ModelSpec
from inference.store import ModelStore

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "engines" / "demo-image-text"
DERM = ROOT / "engines" / "demo-image-embedding"


def _open(name: str, root: Path = ROOT / "engines") -> Predictor:
    return open_predictor(ModelStore([root]).get(name), BackendOptions(), ["onnxruntime"])


@pytest.fixture(scope="module")
def demo() -> Iterator[Predictor]:
    predictor = _open("demo-image-text")
    yield predictor
    predictor.close()


def test_demo_files_regenerate_identically(tmp_path: Path) -> None:
    pytest.importorskip("onnx", reason="the onnx package (test extra) builds the demo model")
    for script, names in ((DEMO / "make_model.py", ("model.onnx", "text.onnx", "tokenizer.json")),
                          (DERM / "make_model.py", ("model.onnx",))):
        spec = importlib.util.spec_from_file_location(f"make_{script.parent.name}", script)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        out = tmp_path / script.parent.name
        out.mkdir()
        module.main(["make_model.py", str(out if len(names) > 1 else out / "model.onnx")])
        for name in names:
            assert (out / name).read_bytes() == (script.parent / name).read_bytes(), f"{script.parent.name}/{name}"
    # Small enough to keep in git (issue 16: the benchmark model stays under about 2 MB).
    assert sum((DEMO / n).stat().st_size for n in ("model.onnx", "text.onnx", "tokenizer.json")) < 2_000_000


def test_image_answers_every_image_field(demo: Predictor) -> None:
    assert demo.spec.image_fields == {"general_img_emb": "general_img_emb", "contrastive_img_emb": "contrastive_img_emb"}
    image = np.random.default_rng(1).uniform(0, 255, (1, 300, 260)).astype(np.float32)
    first, again = demo.predict(image), demo.predict(image)
    assert first.raw["general_img_emb"].shape == (1, 256) and first.raw["contrastive_img_emb"].shape == (1, 128)
    assert np.allclose(np.linalg.norm(first.raw["contrastive_img_emb"], axis=1), 1.0, atol=1e-5)
    assert np.array_equal(first.raw["general_img_emb"], again.raw["general_img_emb"])


def test_text_tower_embeds_prompts_in_the_image_space(demo: Predictor) -> None:
    texts = ["Left pleural effusion", "left PLEURAL effusion", "no acute cardiopulmonary abnormality"]
    vectors = [d["contrastive_txt_emb"] for d in demo.embed_texts(texts)]
    assert all(v.shape == (128,) for v in vectors)
    assert np.allclose([np.linalg.norm(v) for v in vectors], 1.0, atol=1e-5)
    assert np.allclose(vectors[0], vectors[1])  # the tokenizer lower-cases (BERT normaliser)
    assert not np.allclose(vectors[0], vectors[2])


def test_text_limits_are_named(demo: Predictor) -> None:
    with pytest.raises(InputError, match="max_tokens = 32"):
        demo.embed_texts(["effusion " * 40])
    with pytest.raises(InputError, match="max_chars = 1024"):
        demo.embed_texts(["a" * 1025])
    with pytest.raises(InputError, match="no token"):
        demo.embed_texts(["   "])


def test_concurrent_prompts_share_text_batches(demo: Predictor) -> None:
    assert demo.text is not None
    before = demo.text.batcher.stats()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: demo.embed_texts([f"nodule {i}"] * 4), range(8)))
    after = demo.text.batcher.stats()
    assert all(len(a) == 4 for a in answers)
    items, batches = after.items - before.items, after.batches - before.batches
    assert items == 32 and batches < items  # texts from different callers rode in one backend request


def test_model_without_text_tower_refuses_text() -> None:
    derm = _open("demo-image-embedding")
    try:
        assert derm.text is None and derm.spec.image_fields == {"embedding": "general_img_emb"}
        with pytest.raises(InputError, match="no text tower"):
            derm.embed_texts(["effusion"])
    finally:
        derm.close()


def test_missing_tokenizer_fails_at_open(tmp_path: Path) -> None:
    shutil.copytree(DEMO, tmp_path / "demo-image-text")
    (tmp_path / "demo-image-text" / "tokenizer.json").unlink()
    with pytest.raises(SpecError, match="tokenizer file not found"):
        _open("demo-image-text", tmp_path)


def _spec(**changes: object) -> dict[str, object]:
    data = tomllib.loads((DEMO / "model.toml").read_text())
    for dotted, value in changes.items():
        node = data
        *parents, leaf = dotted.split("__")
        for key in parents:
            node = node[key]
        node[leaf] = value
    return data


@pytest.mark.parametrize(("changes", "message"), [
    ({"task": "classification"}, "applies to task = 'embedding' only"),
    ({"embedding__fields": {"embedding": "absent"}}, "not in tensors.outputs"),
    ({"embedding__text__field": "general_img_emb"}, "also an image field"),
    ({"embedding__text__onnx": "../ct-body/model.onnx"}, "String should match pattern"),
    ({"embedding__text__tokenizer": "/etc/passwd"}, "String should match pattern"),
    ({"embedding__fields": {"bad field": "general_img_emb"}}, "must match"),
])
def test_embedding_table_is_validated(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelSpec.model_validate(_spec(**changes))
