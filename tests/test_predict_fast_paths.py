"""The predict path's faster steps give exactly what the plain ones gave (issue 16, Vertex predict overhead).

- ``resize_bilinear`` accumulates in place and gathers columns with ``np.take``: bit-equal to the
  two-tap formula ``lo * (1 - w) + hi * w`` it replaced, for any shape and input dtype.
- ``input_bytes`` is decoded by ``binascii.a2b_base64(strict_mode=True)`` instead of
  ``base64.b64decode(validate=True)``: the same bytes, and the same strings refused.
- Phase 1 groups ``input_bytes`` instances per core and gives each fetching instance its own thread;
  every instance is in exactly one group (the answers' order is checked end to end in test_api_predict).
"""

from __future__ import annotations

import base64
import binascii
import itertools

import numpy as np
import pytest

from dicom_node.api.inputs import InputRejected
from dicom_node.api.routers.predict import _input_bytes, phase_one_groups
from inference.processing import _axis_weights, resize_bilinear


def _two_tap(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The previous implementation, kept here as the reference."""
    h, w = image.shape[-2:]
    ylo, yhi, wy = _axis_weights(h, size[0])
    xlo, xhi, wx = _axis_weights(w, size[1])
    img = image.astype(np.float32, copy=False)
    rows = img[..., ylo, :] * (1 - wy)[:, None] + img[..., yhi, :] * wy[:, None]
    return (rows[..., xlo] * (1 - wx) + rows[..., xhi] * wx).astype(np.float32, copy=False)


@pytest.mark.parametrize(("shape", "size", "dtype"), [
    ((32, 256, 256), (224, 224), np.float32), ((3, 100, 37), (64, 512), np.float64),
    ((2, 4, 5, 6), (3, 9), np.uint8), ((1, 512, 512), (256, 256), np.int16), ((5, 7, 7), (7, 3), np.float32),
])
def test_resize_is_bit_equal_to_the_two_tap_formula(shape: tuple[int, ...], size: tuple[int, int],
                                                    dtype: type) -> None:
    image: np.ndarray = (np.random.default_rng(16).standard_normal(shape) * 1000).astype(dtype)
    got = resize_bilinear(image, size)
    want = _two_tap(image, size)
    assert got.dtype == np.float32 and got.shape == want.shape and got.flags.c_contiguous
    assert np.array_equal(got, want)


def _old_input_bytes(text: str) -> bytes | None:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        try:
            return base64.urlsafe_b64decode(text)
        except (binascii.Error, ValueError):
            return None


def _new_input_bytes(text: str) -> bytes | None:
    try:
        return _input_bytes(text)
    except InputRejected:
        return None


def test_input_bytes_decodes_and_refuses_as_before() -> None:
    alphabet = "QA=+/-_ \n!é"
    for length in range(5):
        for combo in itertools.product(alphabet, repeat=length):
            text = "".join(combo)
            assert _new_input_bytes(text) == _old_input_bytes(text), repr(text)
    data = bytes(range(256)) * 3
    assert _input_bytes(base64.b64encode(data).decode()) == data
    assert _input_bytes(base64.urlsafe_b64encode(data).decode()) == data
    assert _input_bytes({"b64": base64.b64encode(data).decode()}) == data


def test_phase_one_groups_cover_every_instance_once() -> None:
    instances = [{"input_bytes": "x"}, {"gcs_uri": "gs://b/k"}, {"input_bytes": "y"}, "not an object",
                 {"dicomweb_uri": "http://h/s"}, {"input_bytes": "z"}, {"session_id": "s"}]
    groups = phase_one_groups(instances, cores=2)
    assert sorted(i for g in groups for i in g) == list(range(len(instances)))
    assert [0, 5] in groups and [2] in groups  # input_bytes: round-robin over the cores
    for alone in (1, 3, 4, 6):
        assert [alone] in groups  # fetching (and malformed) instances: a thread each
    assert phase_one_groups([{"input_bytes": "x"}], cores=8) == [[0]]
    assert phase_one_groups([], cores=2) == []
