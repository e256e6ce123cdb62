"""A model store for the REST tests and ``bench/api.py``: ct-body plus ``image-cnn``, which takes images.

``image-cnn`` is random-cnn's network behind a spec with ``preprocessing.rescale = false``
(``tests/models/image-cnn.toml``); it lives outside ``tests/models/*/model.toml`` so the
stores other tests enumerate stay as they are.
"""

from __future__ import annotations

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODELS = Path(__file__).resolve().parent


def build_models_dir(root: Path) -> Path:
    """Create ``root`` holding ct-body, random-cnn and image-cnn (links to the repository's files).

    Parameters
    ----------
    root : pathlib.Path
        A folder to create (must not exist).

    Returns
    -------
    pathlib.Path
        ``root``, to use as ``[inference] models_dir``.
    """
    root.mkdir(parents=True)
    for src in (ROOT / "engines" / "ct-body", MODELS / "random-cnn"):
        (root / src.name).symlink_to(src)
    image = root / "image-cnn"
    image.mkdir()
    shutil.copyfile(MODELS / "image-cnn.toml", image / "model.toml")
    (image / "model.onnx").symlink_to(MODELS / "random-cnn" / "model.onnx")
    return root
