"""Text towers of image-text embedding models: ``prompt_query`` to a vector.

CXR Foundation answers a text prompt with ``contrastive_txt_emb``, in the space
of the image's ``contrastive_img_emb``, so a prompt can score images zero-shot
(https://developers.google.com/health-ai-developer-foundations/cxr-foundation/serving-api).
A model declares its tower in ``[embedding.text]`` (:class:`inference.spec.TextSpec`):
a tokenizer file of Hugging Face ``tokenizers`` and a second ONNX graph, opened
on the same backend as the image graph.

Texts are tokenized here, padded to ``max_tokens`` with ``pad_id`` and sent
through a micro-batcher of their own, so concurrent prompts (one request's
instances, other callers) share backend requests as images do. A text longer
than ``max_chars`` characters or ``max_tokens`` tokens is refused with the limit
named: truncating would silently embed a different text.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, wait
from pathlib import Path
from typing import Any

import numpy as np

from inference.backends.base import Backend
from inference.batching import MicroBatcher
from inference.errors import BackendUnavailableError, InferenceError, InputError, SpecError
from inference.spec import TextSpec

log = logging.getLogger(__name__)

MISSING = "missing package: tokenizers (pip install tokenizers), needed by text towers ([embedding.text])"


def load_tokenizer(path: Path) -> Any:
    """Read a ``tokenizers`` JSON file.

    Raises
    ------
    BackendUnavailableError
        ``tokenizers`` is not installed.
    SpecError
        The file is missing or not a tokenizer.
    """
    try:
        from tokenizers import Tokenizer
    except ImportError as exc:
        raise BackendUnavailableError(MISSING) from exc
    if not path.is_file():
        raise SpecError(f"{path}: tokenizer file not found (embedding.text.tokenizer)")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # noqa: BLE001 - tokenizers raises a bare Exception for a malformed file
        raise SpecError(f"{path}: not a tokenizers JSON file: {exc}") from exc


class TextEncoder:
    """Tokenize texts and run them through a text tower, micro-batched.

    Parameters
    ----------
    spec : TextSpec
        The ``[embedding.text]`` table.
    tokenizer_path : pathlib.Path
        The tower's tokenizer file (in the model folder).
    backend : Backend
        The opened text graph; closed by :meth:`close`.
    name : str
        Thread and log name.
    max_delay_s : float
        The batcher's longest wait for a fuller batch.
    """

    def __init__(self, spec: TextSpec, tokenizer_path: Path, backend: Backend, name: str,
                 max_delay_s: float = 0.005) -> None:
        self.spec = spec
        self._tokenizer = load_tokenizer(tokenizer_path)
        self.backend = backend
        self.batcher = MicroBatcher(self._run_batch, spec.max_batch, max_delay_s, name=name)

    def _run_batch(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return self.backend.infer({self.spec.input: batch})

    def token_ids(self, text: str) -> np.ndarray:
        """``text`` as ``max_tokens`` int64 ids, padded with ``pad_id``.

        Raises
        ------
        InputError
            Empty (no token), longer than ``max_chars`` characters or ``max_tokens`` tokens.
        """
        spec = self.spec
        if len(text) > spec.max_chars:
            raise InputError(f"the text has {len(text)} characters, more than this model's max_chars = "
                             f"{spec.max_chars}")
        ids = self._tokenizer.encode(text, add_special_tokens=True).ids
        if not ids:
            raise InputError("the text holds no token (it is empty or only spaces)")
        if len(ids) > spec.max_tokens:
            raise InputError(f"the text is {len(ids)} tokens, more than this model's max_tokens = {spec.max_tokens}; "
                             "shorten it")
        out = np.full(spec.max_tokens, spec.pad_id, dtype=np.int64)
        out[: len(ids)] = ids
        return out

    def embed(self, texts: list[str]) -> list[np.ndarray]:
        """One vector per text, in order.

        Raises
        ------
        InputError
            A text cannot be tokenized within the limits (the first such text).
        inference.errors.BackendError
            The tower failed.
        """
        outcomes = self.embed_each(texts)
        for outcome in outcomes:
            if isinstance(outcome, InferenceError):
                raise outcome
        return [o for o in outcomes if not isinstance(o, InferenceError)]

    def embed_each(self, texts: list[str]) -> list[np.ndarray | InferenceError]:
        """One vector or one error per text, in order: every tokenizable text rides in one submission."""
        ids: list[np.ndarray | InferenceError] = []
        for text in texts:
            try:
                ids.append(self.token_ids(text))
            except InputError as exc:
                ids.append(exc)
        # One (max_tokens,) item per text; the batcher stacks them into (batch, max_tokens).
        futures: list[Future[dict[str, np.ndarray]]] = self.batcher.submit_many(
            (i for i in ids if not isinstance(i, InferenceError)), flush=True)
        wait(futures)
        pending = iter(futures)
        out: list[np.ndarray | InferenceError] = []
        for item in ids:
            if isinstance(item, InferenceError):
                out.append(item)
                continue
            try:
                out.append(np.asarray(next(pending).result()[self.spec.output]).reshape(-1))
            except InferenceError as exc:
                out.append(exc)
        return out

    def close(self) -> None:
        """Stop the batcher and release the backend."""
        self.batcher.close()
        self.backend.close()
