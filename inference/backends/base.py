"""The interface every backend module implements.

A backend module (``inference/backends/<name>.py``) exposes two functions and
imports its runtime (onnxruntime, tensorrt, tritonclient, cuda) only inside them:

- ``is_available(options) -> (bool, reason)``: can this backend run here? The
  reason names what is missing (package, GPU, server URL) or what was found.
- ``load(entry, options) -> Backend``: open the model on this backend.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from inference.triton_pool import EndpointState


@dataclass(frozen=True)
class BackendOptions:
    """Node-level settings the backends read (from ``[inference]`` in the node config)."""

    onnxruntime_threads: int = 0
    #: ``grpc://host:port`` (default scheme) or ``http://host:port``; empty = no Triton.
    triton_url: str = ""
    #: More Triton servers (a farm, issue 18); with ``triton_url`` the servers any model may use.
    triton_urls: tuple[str, ...] = ()
    #: Seconds a Triton request may take.
    triton_timeout_s: float = 30.0
    #: Seconds between health checks of a model's Triton servers.
    triton_health_interval_s: float = 5.0
    #: Seconds one health-check call (readiness, metadata) may take.
    triton_probe_timeout_s: float = 2.0
    #: Where TensorRT plans and timing caches go; default ``<model dir>/cache``.
    cache_dir: Path | None = None
    #: CUDA device ordinal for TensorRT / the CUDA execution provider.
    device_id: int = 0


class Backend(ABC):
    """One model opened on one runtime; :meth:`infer` takes and returns whole batches."""

    name: ClassVar[str]

    @abstractmethod
    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch.

        Parameters
        ----------
        inputs : mapping
            Input tensor name -> array whose axis 0 is the batch.

        Returns
        -------
        dict
            Output tensor name -> array with the same batch size.

        Raises
        ------
        inference.errors.BackendError
            The runtime failed; the runtime's own exception is the cause.
        """

    @property
    def description(self) -> str:
        """Short human-readable detail (device, providers), for logs and ``models list``."""
        return self.name

    def endpoints(self) -> list[EndpointState]:
        """The remote servers this backend balances over (a Triton farm), for metrics; none for local runtimes."""
        return []

    def close(self) -> None:  # noqa: B027 - optional hook: most backends hold nothing to release
        """Release the runtime's resources (sessions, device memory, connections)."""
