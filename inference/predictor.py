"""Predictor: a model spec + a backend + a micro-batcher, from a volume to a result.

``predict`` takes a rescaled volume ``(slices, rows, cols)`` (HU for CT, as the
pixel pipeline delivers it), applies the spec's preprocessing, cuts it into
work items (2D: one per slice; 3D: sliding-window tiles), sends them through
the model's batcher, which runs them on the backend off the caller's thread,
and reassembles and post-processes the outputs. Many jobs may call
``predict`` concurrently; their items share batches.

An image-text embedding model (``[embedding.text]``) also has a text tower:
:meth:`Predictor.embed_texts` runs prompts through it (:mod:`inference.text`),
opened on the same backend as the image graph.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from concurrent.futures import Future, wait
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from inference.backends import Backend, BackendOptions, load_backend, select_backend
from inference.batching import BatchStats, MicroBatcher, stack_views
from inference.errors import BackendUnavailableError, InferenceError, InputError, SpecError
from inference.processing import activate, apply_intensity, blend_tiles, decide, resize_bilinear, tile_volume
from inference.spec import ModelSpec
from inference.store import ModelEntry
from inference.text import TextEncoder

log = logging.getLogger(__name__)

_NP_DTYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32, "uint8": np.uint8, "bool": np.bool_}


@dataclass
class Prediction:
    """What one ``predict`` call produced.

    Attributes
    ----------
    raw : dict
        Every output tensor, stacked over work items in slice order (2D:
        ``(n_slices, ...)``; 3D: blended ``(1, C, slices, rows, cols)``).
    probabilities : numpy.ndarray
        The post-processed output after activation, channel axis 1.
    result : numpy.ndarray
        The decision: uint8 masks (threshold), class indices (argmax), or probabilities.
    slice_indices : list of int
        Which slices of the input the 2D results correspond to.
    parameters : dict
        The effective parameters (defaults merged with overrides).
    timings : dict
        Seconds spent per stage.
    """

    raw: dict[str, np.ndarray]
    probabilities: np.ndarray
    result: np.ndarray
    slice_indices: list[int]
    parameters: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)


class Predictor:
    """Run one model on volumes.

    Parameters
    ----------
    entry : ModelEntry
        The model's spec and folder.
    backend : Backend
        An opened backend; the predictor closes it on :meth:`close`.
    max_delay_s : float
        The batcher's max wait for a fuller batch.
    """

    def __init__(self, entry: ModelEntry, backend: Backend, max_delay_s: float = 0.005,
                 text: TextEncoder | None = None) -> None:
        self.entry = entry
        self.spec: ModelSpec = entry.spec
        self.backend = backend
        #: The text tower of an image-text embedding model, else None.
        self.text = text
        self._input = self.spec.tensors.inputs[0]
        self._dtype = _NP_DTYPES[self._input.dtype]
        self.batcher = MicroBatcher(
            self._run_batch, self.spec.tensors.max_batch, max_delay_s, name=self.spec.name, validate=self._validate_item
        )

    def _run_batch(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return self.backend.infer({self._input.name: batch})

    def _validate_item(self, item: np.ndarray) -> None:
        dims = self._input.dims
        if item.ndim != len(dims) or any(d != -1 and d != s for d, s in zip(dims, item.shape, strict=False)):
            raise InputError(f"model {self.spec.name!r}: item shape {item.shape} does not match input dims {dims}")
        if item.dtype != self._dtype:
            raise InputError(f"model {self.spec.name!r}: item dtype {item.dtype} is not {self._input.dtype}")

    def stats(self) -> BatchStats:
        """Batcher counters (fill ratio, batch sizes)."""
        return self.batcher.stats()

    def close(self) -> None:
        """Stop the batcher and release the backend (and the text tower's)."""
        self.batcher.close()
        self.backend.close()
        if self.text is not None:
            self.text.close()

    def embed_texts(self, texts: list[str]) -> list[dict[str, np.ndarray]]:
        """The text tower's answer per text: ``{field: vector}`` (``contrastive_txt_emb``), in order.

        Raises
        ------
        inference.errors.InputError
            The model has no text tower, or a text is empty or over ``max_chars`` / ``max_tokens``.
        inference.errors.BackendError
            The tower failed.
        """
        outcomes = self.embed_texts_each(texts)
        for outcome in outcomes:
            if isinstance(outcome, InferenceError):
                raise outcome
        return [o for o in outcomes if not isinstance(o, InferenceError)]

    def embed_texts_each(self, texts: list[str]) -> list[dict[str, np.ndarray] | InferenceError]:
        """As :meth:`embed_texts`, one outcome per text: a bad text is its own error, the others still run."""
        if self.text is None:
            return [InputError(f"model {self.spec.name!r} has no text tower ([embedding.text] in its model.toml)")
                    for _ in texts]
        field_name = self.text.spec.field
        return [o if isinstance(o, InferenceError) else {field_name: o} for o in self.text.embed_each(texts)]

    def predict(self, volume: np.ndarray, parameters: dict[str, Any] | None = None,
                guidance: np.ndarray | None = None) -> Prediction:
        """Run the model on one volume.

        Parameters
        ----------
        volume : numpy.ndarray
            ``(slices, rows, cols)`` rescaled values (HU for CT).
        parameters : dict, optional
            Caller overrides of the spec's parameters (``threshold``, ``slice_idx``).
        guidance : numpy.ndarray, optional
            ``(channels, slices, rows, cols)`` point maps of a ``[guidance]`` model, fed after the
            image channel unchanged (no intensity mapping); required by such a model, refused by others.

        Returns
        -------
        Prediction

        Raises
        ------
        inference.errors.ParameterError
            A parameter is unknown or out of bounds.
        inference.errors.InputError
            The volume does not fit the model.
        inference.errors.BackendError
            The backend failed on an item (the first failure is raised).
        """
        params = self.spec.resolve_parameters(parameters)
        vol = self._check_volume(volume)
        guide = self._check_guidance(vol.shape, guidance)
        t0 = time.perf_counter()
        if self.spec.preprocessing.mode == "3d":
            raw, indices = self._predict_3d(vol, guide), list(range(vol.shape[0]))
        else:
            raw, indices = self._predict_2d(vol, params.get("slice_idx") or [], guide)
        return self._finish(vol, raw, indices, params, t0)

    def predict_many(self, volumes: list[np.ndarray],
                     parameters: dict[str, Any] | None = None) -> list[Prediction | InferenceError]:
        """Run the model on several volumes (one predict request's instances), one outcome each, in order.

        A 2D model without guidance gets every slice of every volume in one submission,
        so a request of 32 images fills one batch of ``max_batch`` instead of racing 32
        partial ones; other models run the volumes one by one. A volume that fails
        (shape, backend) is that volume's error and never fails the others.

        Raises
        ------
        inference.errors.ParameterError
            A parameter is unknown or out of bounds (shared by every volume).
        """
        params = self.spec.resolve_parameters(parameters)
        if self.spec.preprocessing.mode == "3d" or self.spec.guidance is not None:
            return [self._predict_or_error(v, parameters) for v in volumes]
        t0 = time.perf_counter()
        prepared: list[tuple[np.ndarray, np.ndarray, list[int]] | InferenceError] = []
        for volume in volumes:
            try:
                vol = self._check_volume(volume)
                prepared.append((vol, *self._items_2d(vol, params.get("slice_idx") or [], None)))
            except InferenceError as exc:
                prepared.append(exc)
        items = (p[1][k] for p in prepared if not isinstance(p, InferenceError) for k in range(len(p[2])))
        futures = self.batcher.submit_many(items, flush=True)
        wait(futures)
        out: list[Prediction | InferenceError] = []
        start = 0
        for p in prepared:
            if isinstance(p, InferenceError):
                out.append(p)
                continue
            vol, _, indices = p
            mine, start = futures[start : start + len(indices)], start + len(indices)
            try:
                out.append(self._finish(vol, self._gather(mine), indices, params, t0))
            except InferenceError as exc:
                out.append(exc)
        return out

    def _predict_or_error(self, volume: np.ndarray, parameters: dict[str, Any] | None) -> Prediction | InferenceError:
        try:
            return self.predict(volume, parameters)
        except InferenceError as exc:
            return exc

    def _check_volume(self, volume: np.ndarray) -> np.ndarray:
        vol = np.asarray(volume)
        if vol.ndim != 3 or 0 in vol.shape:
            raise InputError(f"model {self.spec.name!r}: expected a (slices, rows, cols) volume, got shape {vol.shape}")
        return vol

    def _finish(self, vol: np.ndarray, raw: dict[str, np.ndarray], indices: list[int], params: dict[str, Any],
                t0: float) -> Prediction:
        """Post-process the stacked outputs of one volume into its :class:`Prediction`."""
        t1 = time.perf_counter()
        out = raw[self.spec.output_name]
        if self.spec.preprocessing.mode == "2d" and self.spec.preprocessing.resize and out.ndim == 4:
            out = resize_bilinear(out, vol.shape[1:])
        probs = activate(out, self.spec.postprocessing.activation)
        result = decide(probs, self.spec.postprocessing, params.get("threshold"))
        t2 = time.perf_counter()
        return Prediction(raw, probs, result, indices, params, {"preprocess+infer": t1 - t0, "postprocess": t2 - t1})

    def _check_guidance(self, shape: tuple[int, ...], guidance: np.ndarray | None) -> np.ndarray | None:
        """The guidance maps as float32, checked against the spec's ``[guidance]`` and the volume's shape."""
        table = self.spec.guidance
        if table is None:
            if guidance is not None:
                raise InputError(f"model {self.spec.name!r} takes no guidance points (no [guidance] in its model.toml)")
            return None
        want = (len(table.channels), *shape)
        if guidance is None or guidance.shape != want:
            got = None if guidance is None else guidance.shape
            raise InputError(f"model {self.spec.name!r} needs guidance maps of shape {want}, got {got}")
        return np.asarray(guidance, dtype=np.float32)

    def _predict_2d(self, vol: np.ndarray, slice_idx: list[int],
                    guidance: np.ndarray | None = None) -> tuple[dict[str, np.ndarray], list[int]]:
        images, indices = self._items_2d(vol, slice_idx, guidance)
        futures = self.batcher.submit_many((images[k] for k in range(len(indices))), flush=True)
        wait(futures)  # one wake-up for the whole job instead of one GIL hand-off per slice
        return self._gather(futures), indices

    @staticmethod
    def _gather(futures: list[Future[dict[str, np.ndarray]]]) -> dict[str, np.ndarray]:
        """The items' outputs stacked in order (the first failed item's error is raised)."""
        results = [f.result() for f in futures]
        return {name: stack_views([r[name] for r in results]) for name in results[0]}

    def _items_2d(self, vol: np.ndarray, slice_idx: list[int],
                  guidance: np.ndarray | None) -> tuple[np.ndarray, list[int]]:
        """The preprocessed slices ``(n, channels, rows, cols)`` a 2D model is fed, and their indices."""
        indices = list(slice_idx) if slice_idx else list(range(vol.shape[0]))
        bad = [i for i in indices if not 0 <= i < vol.shape[0]]
        if bad:
            raise InputError(f"slice_idx {bad} outside the volume's {vol.shape[0]} slices")
        pre = self.spec.preprocessing
        # Whole-volume vectorised preprocessing, then one view per slice: submitting is then
        # quick enough that a job's slices reach the batcher together and fill one batch.
        images = apply_intensity(vol[indices] if slice_idx else vol, pre.intensity)
        if pre.resize:
            images = resize_bilinear(images, pre.resize)
        images = images.astype(self._dtype, copy=False)[:, None]
        if guidance is not None:
            # Point maps follow the image as extra channels: (n, 1 + G, rows, cols).
            maps = (guidance[:, indices] if slice_idx else guidance).transpose(1, 0, 2, 3)
            if pre.resize:
                maps = resize_bilinear(maps, pre.resize)
            images = np.concatenate([images, maps.astype(self._dtype, copy=False)], axis=1)
        return images, indices

    def _predict_3d(self, vol: np.ndarray, guidance: np.ndarray | None = None) -> dict[str, np.ndarray]:
        window = self.spec.preprocessing.sliding_window
        assert window is not None  # guaranteed by Preprocessing validation
        x = apply_intensity(vol, self.spec.preprocessing.intensity)
        padded, origins = tile_volume(x, window)
        stacked = padded[None]
        if guidance is not None:
            # Pad the maps like the image (edge values), then tile image and maps together.
            pads = [(0, 0)] + [(0, p - s) for s, p in zip(vol.shape, padded.shape, strict=True)]
            stacked = np.concatenate([stacked, np.pad(guidance, pads, mode="edge")], axis=0)
        d, h, w = window.roi
        inputs: Iterator[np.ndarray] = (stacked[:, z : z + d, y : y + h, x0 : x0 + w].astype(self._dtype, copy=False) for z, y, x0 in origins)
        futures = self.batcher.submit_many(inputs, flush=True)
        wait(futures)
        results = [f.result() for f in futures]
        raw: dict[str, np.ndarray] = {}
        for name in results[0]:
            outputs = [r[name] for r in results]
            raw[name] = blend_tiles(outputs, origins, padded.shape, vol.shape, window)[None]
        return raw


def open_predictor(
    entry: ModelEntry,
    options: BackendOptions,
    config_order: list[str],
    backend: str | None = None,
    max_delay_s: float = 0.005,
) -> Predictor:
    """Choose (or take the named) backend, open the model on it, and wrap it in a Predictor.

    Raises
    ------
    BackendUnavailableError
        No backend can run the model here (every reason is listed), or the named one cannot.
    """
    if backend is None:
        selection = select_backend(entry.spec, config_order, options)
        if selection.name is None:
            reasons = "; ".join(f"{k}: {v}" for k, v in selection.passed_over.items())
            raise BackendUnavailableError(f"no backend can run {entry.spec.name!r}: {reasons}")
        backend = selection.name
    log.info("opening model model=%s backend=%s", entry.spec.name, backend)
    image_backend = load_backend(backend, entry, options)
    try:
        text = _open_text(entry, backend, options, max_delay_s)
    except BaseException:
        image_backend.close()
        raise
    return Predictor(entry, image_backend, max_delay_s, text)


def _open_text(entry: ModelEntry, backend: str, options: BackendOptions, max_delay_s: float) -> TextEncoder | None:
    """Open the text tower of ``entry`` on ``backend`` (None without one); its files must be in the model folder.

    Raises
    ------
    inference.errors.SpecError
        The tower's ONNX or tokenizer file is missing or unreadable.
    """
    text_spec = entry.spec.text_spec()
    table = entry.spec.embedding.text
    if text_spec is None or table is None:
        return None
    text_entry = ModelEntry(spec=text_spec, directory=entry.directory)
    if not text_entry.onnx_path.is_file():
        raise SpecError(f"{entry.directory / 'model.toml'}: embedding.text.onnx: file {table.onnx!r} not found")
    tower = load_backend(backend, text_entry, options)
    try:
        return TextEncoder(table, entry.directory / table.tokenizer, tower, f"{entry.spec.name}.text", max_delay_s)
    except BaseException:
        tower.close()
        raise
