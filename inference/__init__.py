"""Model inference for dicom-node: specs, model store, backends, batching.

This package turns arrays into model outputs and knows no DICOM: it never
imports pydicom or :mod:`dicom_node` (layering is one way, ``dicom_node``
imports ``inference``). Runtimes (onnxruntime, tensorrt, tritonclient, cuda)
are imported lazily inside the backends, never at import time.
"""

from inference.errors import InferenceError

__all__ = ["InferenceError"]
