"""Pre- and post-processing in NumPy: intensity, resize, sliding windows, activations.

Everything here works on plain arrays laid out as ``(slices, rows, cols)`` for
volumes and ``(batch, channels, ...)`` for model outputs, following the
conventions of MONAI's ``ScaleIntensityRange``, ``SlidingWindowInferer``
(overlap, gaussian blending) and ``AsDiscrete`` (argmax / threshold).
"""

from __future__ import annotations

import functools

import numpy as np

from inference.spec import Intensity, Normalize, Postprocessing, SlidingWindow, Window


def apply_intensity(values: np.ndarray, intensity: Intensity) -> np.ndarray:
    """Return ``values`` (HU or modality values) windowed or normalised, as float32.

    Parameters
    ----------
    values : numpy.ndarray
        Rescaled pixel values (modality LUT applied).
    intensity : Window | Normalize | NoIntensity
        The spec's ``preprocessing.intensity``.
    """
    if isinstance(intensity, Window):
        low = np.float32(intensity.center - intensity.width / 2.0)
        # One output buffer, operations in place: this runs on every slice of every series.
        out = np.subtract(values, low, dtype=np.float32)
        out *= np.float32(1.0 / intensity.width)
        return np.clip(out, 0.0, 1.0, out=out)
    if isinstance(intensity, Normalize):
        # np.array copies exactly once (asarray(..., float32).copy() converted, then copied again).
        out = np.array(values, dtype=np.float32)
        if intensity.clip is not None:
            np.clip(out, intensity.clip[0], intensity.clip[1], out=out)
        out -= np.float32(intensity.mean)
        out *= np.float32(1.0 / intensity.std)
        return out
    return np.asarray(values, dtype=np.float32)


@functools.lru_cache(maxsize=64)
def _axis_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices below/above each output position and the interpolation weight (half-pixel centres).

    Cached (read-only arrays): every slice of every request to a model asks for the same few sizes.
    """
    pos = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    pos = np.clip(pos, 0, n_in - 1)
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, n_in - 1)
    out = lo, hi, (pos - lo).astype(np.float32)
    for array in out:
        array.flags.writeable = False
    return out


def resize_bilinear(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize the last two axes to ``size`` with bilinear interpolation (align_corners=False).

    Parameters
    ----------
    image : numpy.ndarray
        Array of shape ``(..., H, W)``.
    size : tuple of int
        Target ``(rows, cols)``.
    """
    h, w = image.shape[-2:]
    if (h, w) == tuple(size):
        return image.astype(np.float32, copy=False)
    ylo, yhi, wy = _axis_weights(h, size[0])
    xlo, xhi, wx = _axis_weights(w, size[1])
    img = image.astype(np.float32, copy=False)
    # The same float32 operations in the same order as lo * (1 - w) + hi * w (bit-equal results),
    # but accumulated in place, and the column gather done by np.take: numpy's fancy indexing on
    # the last axis of a stack was the slowest step (about 3x slower on 32 slices of 256x256).
    rows = img[..., ylo, :] * (1 - wy)[:, None]
    rows += img[..., yhi, :] * wy[:, None]
    out = np.take(rows, xlo, axis=-1)
    out *= 1 - wx
    out += np.take(rows, xhi, axis=-1) * wx
    return out


def window_starts(size: int, roi: int, overlap: float) -> list[int]:
    """Start offsets of tiles of length ``roi`` covering ``size`` with the given overlap.

    The last tile is flush with the end, as in MONAI's sliding window, so
    every voxel is covered and no tile leaves the (padded) volume.
    """
    if size <= roi:
        return [0]
    step = max(1, int(roi * (1.0 - overlap)))
    starts = list(range(0, size - roi + 1, step))
    if starts[-1] != size - roi:
        starts.append(size - roi)
    return starts


def blend_weights(roi: tuple[int, int, int], mode: str) -> np.ndarray:
    """Per-voxel tile weight: ones, or a gaussian (sigma = roi/8) that favours tile centres."""
    if mode == "constant":
        return np.ones(roi, dtype=np.float32)
    axes = []
    for n in roi:
        centre = (n - 1) / 2.0
        sigma = max(n / 8.0, 1e-3)
        axes.append(np.exp(-0.5 * ((np.arange(n) - centre) / sigma) ** 2))
    weights = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    # Never exactly zero, so every voxel keeps a defined (normalisable) weight.
    return np.maximum(weights / weights.max(), 1e-3).astype(np.float32)


def tile_volume(volume: np.ndarray, window: SlidingWindow) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """Pad ``volume`` up to at least the roi and list the tile origins.

    Returns
    -------
    tuple
        The padded volume (edge values repeated) and the ``(z, y, x)`` origin of each tile.
    """
    pads = [(0, max(0, r - s)) for s, r in zip(volume.shape, window.roi, strict=False)]
    padded = np.pad(volume, pads, mode="edge") if any(p[1] for p in pads) else volume
    origins = [
        (z, y, x)
        for z in window_starts(padded.shape[0], window.roi[0], window.overlap)
        for y in window_starts(padded.shape[1], window.roi[1], window.overlap)
        for x in window_starts(padded.shape[2], window.roi[2], window.overlap)
    ]
    return padded, origins


def blend_tiles(
    tiles: list[np.ndarray],
    origins: list[tuple[int, int, int]],
    padded_shape: tuple[int, ...],
    out_shape: tuple[int, int, int],
    window: SlidingWindow,
) -> np.ndarray:
    """Blend per-tile outputs ``(C, d, h, w)`` into one ``(C, slices, rows, cols)`` volume."""
    weights = blend_weights(window.roi, window.blend)
    channels = tiles[0].shape[0]
    acc = np.zeros((channels, *padded_shape), dtype=np.float32)
    norm = np.zeros(padded_shape, dtype=np.float32)
    d, h, w = window.roi
    for tile, (z, y, x) in zip(tiles, origins, strict=False):
        acc[:, z : z + d, y : y + h, x : x + w] += tile * weights
        norm[z : z + d, y : y + h, x : x + w] += weights
    out = acc / norm
    s, r, c = out_shape
    return out[:, :s, :r, :c]


def activate(raw: np.ndarray, activation: str) -> np.ndarray:
    """Apply the spec's activation over the channel axis (axis 1)."""
    x = raw.astype(np.float32, copy=False)
    if activation == "sigmoid":
        return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)
    if activation == "softmax":
        shifted = np.exp(x - x.max(axis=1, keepdims=True))
        return (shifted / shifted.sum(axis=1, keepdims=True)).astype(np.float32)
    return x


def decide(probabilities: np.ndarray, post: Postprocessing, threshold: float | None = None) -> np.ndarray:
    """Turn probabilities ``(N, C, ...)`` into the result the task reports.

    Parameters
    ----------
    probabilities : numpy.ndarray
        Activated outputs, channel axis 1.
    post : Postprocessing
        The spec's post-processing table.
    threshold : float, optional
        Overrides ``post.threshold`` (the caller's ``threshold`` parameter).

    Returns
    -------
    numpy.ndarray
        ``threshold``: uint8 masks ``(N, C, ...)``; ``argmax``: int64 class
        indices ``(N, ...)``; ``none``: the probabilities unchanged.
    """
    if post.decision == "threshold":
        limit = post.threshold if threshold is None else threshold
        # bool and uint8 share their layout: a view instead of a second pass over the volume.
        return np.greater(probabilities, limit).view(np.uint8)
    if post.decision == "argmax":
        return probabilities.argmax(axis=1)
    return probabilities
