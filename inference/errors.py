"""Exception tree of :mod:`inference`.

:mod:`inference` knows no DICOM and does not import :mod:`dicom_node`, so its
root is a plain :class:`Exception`; ``dicom_node.errors`` re-exports it. Errors
of third-party runtimes (ONNX Runtime, TensorRT, tritonclient, CUDA) are wrapped
at the boundary with ``raise ... from exc``::

    InferenceError
    ├── SpecError                  a model.toml is invalid (names the file and the key)
    ├── ModelNotFoundError         no model of that name in the store
    ├── BackendUnavailableError    a backend's package, GPU or server is missing
    ├── BackendError               a backend failed to load or run a model
    │   └── EngineBuildError       TensorRT could not build an engine
    ├── InputError                 an input array does not fit the model's tensors
    └── ParameterError             a caller-supplied parameter is unknown or out of bounds
"""

from __future__ import annotations


class InferenceError(Exception):
    """Root of every error :mod:`inference` raises on purpose."""


class SpecError(InferenceError):
    """A model spec is invalid; the message starts with ``<file>: <key>:``."""


class ModelNotFoundError(InferenceError):
    """The model store holds no (valid) model of that name."""


class BackendUnavailableError(InferenceError):
    """A backend cannot run here; the message names the missing package, GPU or server."""


class BackendError(InferenceError):
    """A backend failed while loading or executing a model."""


class EngineBuildError(BackendError):
    """TensorRT could not build or deserialize an engine."""


class InputError(InferenceError):
    """An input array's shape or dtype does not fit the model's input tensor."""


class ParameterError(InferenceError):
    """A caller-supplied parameter is unknown, of the wrong type or out of bounds."""
