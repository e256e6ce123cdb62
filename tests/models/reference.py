"""NumPy references of the bundled models (no SciPy), written from their docstrings.

They share no code with ``engines/*/make_model.py``: the point is an
independent second implementation of the same algorithm to compare against.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def window(hu: np.ndarray) -> np.ndarray:
    """The bundled models' preprocessing: centre 0 HU, width 2000 HU, to [0, 1]."""
    return np.clip((hu.astype(np.float32) + 1000.0) / 2000.0, 0.0, 1.0)


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation of (..., H, W) with a square; out-of-image pixels are ignored."""
    pad = [(0, 0)] * (mask.ndim - 2) + [(radius, radius)] * 2
    padded = np.pad(mask.astype(bool), pad, constant_values=False)
    k = 2 * radius + 1
    return sliding_window_view(padded, (k, k), axis=(-2, -1)).any(axis=(-2, -1))


def erode(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary erosion of (..., H, W) with a square; out-of-image pixels are ignored (not background)."""
    pad = [(0, 0)] * (mask.ndim - 2) + [(radius, radius)] * 2
    padded = np.pad(mask.astype(bool), pad, constant_values=True)
    k = 2 * radius + 1
    return sliding_window_view(padded, (k, k), axis=(-2, -1)).all(axis=(-2, -1))


def enclosed(mask: np.ndarray) -> np.ndarray:
    """Pixels with ``mask`` somewhere to the left, right, above and below them (inclusive)."""
    m = mask.astype(bool)
    left = np.logical_or.accumulate(m, axis=-1)
    right = np.logical_or.accumulate(m[..., ::-1], axis=-1)[..., ::-1]
    up = np.logical_or.accumulate(m, axis=-2)
    down = np.logical_or.accumulate(m[..., ::-1, :], axis=-2)[..., ::-1, :]
    return left & right & up & down


def body_mask(hu: np.ndarray) -> np.ndarray:
    """ct-body on (slices, H, W) HU: threshold -500 HU, 5x5 opening, enclosure fill."""
    tissue = window(hu) > 0.25
    return enclosed(dilate(erode(tissue, 2), 2))


def lungs_mask(hu: np.ndarray) -> np.ndarray:
    """ct-lungs on (slices, H, W) HU: HU < -400 inside the eroded body, 3x3 opening."""
    core = erode(body_mask(hu), 2)
    air = window(hu) < 0.3
    return dilate(erode(air & core, 1), 1)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of two boolean masks (1.0 when both are empty)."""
    a, b = a.astype(bool), b.astype(bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2.0 * (a & b).sum() / total)


def phantom(slices: int = 8, rows: int = 96, cols: int = 96, seed: int = 0) -> np.ndarray:
    """A synthetic chest CT in HU: air, an elliptic body with two lungs, a trachea, a spine, a couch, noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    cy, cx = rows * 0.48, cols / 2
    vol = np.full((slices, rows, cols), -1000.0, dtype=np.float32)
    for z in range(slices):
        scale = 1.0 + 0.05 * np.sin(z / 3.0)
        body = ((yy - cy) / (0.36 * rows * scale)) ** 2 + ((xx - cx) / (0.44 * cols * scale)) ** 2 <= 1
        lungs = [((yy - cy) / (0.22 * rows)) ** 2 + ((xx - cx - s * 0.2 * cols) / (0.13 * cols)) ** 2 <= 1 for s in (-1, 1)]
        trachea = (yy - cy + 0.12 * rows) ** 2 + (xx - cx) ** 2 <= (0.03 * rows) ** 2
        spine = (yy - cy - 0.25 * rows) ** 2 + (xx - cx) ** 2 <= (0.05 * rows) ** 2
        sl = vol[z]
        sl[body] = 40.0
        sl[lungs[0] | lungs[1]] = -850.0
        sl[trachea] = -1000.0
        sl[spine] = 700.0
        sl[int(rows * 0.9) : int(rows * 0.9) + 2, 4:-4] = 200.0  # couch: thin, must be removed
    return vol + rng.normal(0.0, 15.0, vol.shape).astype(np.float32)
