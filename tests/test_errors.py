"""One exception tree: the classes errors.py draws hang under DicomNodeError; InferenceError is wrapped."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from dicom_node import errors
from dicom_node.errors import DicomNodeError, ModelError
from inference.errors import BackendUnavailableError, EngineBuildError, InferenceError, ModelNotFoundError

PACKAGE = Path(errors.__file__).parent
#: Exception classes outside the tree on purpose, each in errors.py's table with where it is mapped.
OUTSIDE = {"MultipartError"}


def _exception_classes() -> list[str]:
    """Every module-level class of dicom_node whose bases name an Error/Exception class."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef) and any(
                    isinstance(b, ast.Name) and (b.id.endswith(("Error", "Exception", "Refused", "Rejected"))
                                                 or b.id in ("Exception", "DicomNodeError")) for b in node.bases):
                found.append(f"{module}.{node.name}")
    return found


def test_every_exception_class_is_in_the_tree() -> None:
    classes = _exception_classes()
    assert "dicom_node.api.errors.ApiError" in classes and "dicom_node.api.inputs.InputRejected" in classes
    for qualified in classes:
        module, _, name = qualified.rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        if name in OUTSIDE:
            continue
        assert issubclass(cls, DicomNodeError), f"{qualified} is not a DicomNodeError"
        if not name.startswith("_"):
            assert name in (errors.__doc__ or ""), f"errors.py does not draw {name}"


@pytest.mark.parametrize(("cause", "kind"), [
    (ModelNotFoundError("no model 'x'"), "not_found"),
    (BackendUnavailableError("no GPU"), "unavailable"),
    (EngineBuildError("trt"), "backend"),
    (InferenceError("other"), "inference"),
])
def test_inference_errors_are_wrapped_with_their_kind(cause: InferenceError, kind: str) -> None:
    with pytest.raises(ModelError) as caught:
        try:
            raise cause
        except InferenceError as exc:
            raise ModelError.wrap(exc) from exc
    assert caught.value.kind == kind and caught.value.cause is cause
    assert caught.value.__cause__ is cause and str(caught.value) == str(cause)
