"""Series -> volume: sorted along the slice normal, modality values, affine, source UIDs.

A series of single-frame images (CT/MR Image Storage) or an enhanced
multi-frame object (PS3.3 C.7.6.16) becomes one ``(slices, rows, cols)``
float32 array of modality values (HU for CT, PS3.3 C.11.1). The output is
allocated once and each slice is decoded straight into its slot, so peak
memory stays near the size of the output: a 1,000-slice 512x512 CT needs about
1 GiB, not several.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from dicom_node.errors import DecodeError, GeometryError, PixelError
from dicom_node.pixels.declared import check_budget, check_dataset
from dicom_node.pixels.decode import decode_instance, describe, iter_frames, read_dataset, transfer_syntax_of
from dicom_node.pixels.geometry import (
    SliceGeometry,
    affine_and_spacing,
    check_geometry,
    frame_geometries,
    functional_group,
    is_enhanced,
    slice_distances,
    slice_geometry,
)
from dicom_node.pixels.gpu import DecoderSelection, decode_files_gpu, select_decoder
from dicom_node.pixels.inflate import DEFAULT_MAX_INFLATED_BYTES
from dicom_node.pixels.modality import apply_into, modality_transform
from dicom_node.pixels.pool import DecodePool, default_workers
from dicom_node.pixels.syntaxes import syntax_info

log = logging.getLogger(__name__)

#: Geometry rules that make a volume impossible; spacing irregularities only warn.
_FATAL_RULES = {"required", "mixed-sizes", "mixed-pixel-spacing", "consistent-orientation", "duplicate-position", "min-slices"}

#: Below this many files a worker pool costs more to start than it saves.
_POOL_MIN_FILES = 16

#: Default budget for one decoded volume (matches ``pixels.max_volume_bytes``).
DEFAULT_MAX_VOLUME_BYTES = 4 * 1024**3


@dataclass
class Volume:
    """One image volume in patient space.

    Attributes
    ----------
    array : numpy.ndarray
        ``(slices, rows, cols)`` float32 modality values (HU for CT), sorted along
        the slice normal; MONOCHROME1 data are inverted so larger is brighter.
    affine : numpy.ndarray
        4x4 map from voxel index (slice, row, col) to patient LPS mm (PS3.3 C.7.6.2.1.1).
    spacing : tuple of float
        (slice, row, col) spacing in mm.
    sop_instance_uids : list of str
        Source SOP Instance UID of each slice, in ``array`` order.
    source_frames : list of int
        1-based frame number within that instance (1 for single-frame images).
    window : tuple of float, optional
        First Window Center / Width of the series (PS3.3 C.11.2.1.2).
    decoder : str
        Which decode path ran ("cpu: 2 worker processes", "gpu: nvImageCodec", ...).
    """

    array: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    sop_instance_uids: list[str]
    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str | None
    modality: str
    source_frames: list[int] = field(default_factory=list)
    window: tuple[float, float] | None = None
    photometric_interpretation: str = "MONOCHROME2"
    decoder: str = ""
    voi_source: Dataset | None = field(default=None, repr=False)

    def windowed(self, center: float | None = None, width: float | None = None) -> np.ndarray:
        """Return the VOI-transformed volume scaled to [0, 1].

        With ``center``/``width`` (or the stored window) the linear window
        function of PS3.3 C.11.2.1.2.1 is applied; otherwise a VOI LUT Sequence
        of the first slice is used when present (PS3.3 C.11.2.1.1).

        Raises
        ------
        PixelError
            When no window is given or stored and no VOI LUT exists.
        """
        if center is None or width is None:
            if self.window is None:
                if self.voi_source is not None and "VOILUTSequence" in self.voi_source:
                    from pydicom.pixels import apply_voi_lut

                    out = apply_voi_lut(self.array, self.voi_source, prefer_lut=True).astype(np.float32)
                    lo, hi = float(out.min()), float(out.max())
                    return (out - lo) / ((hi - lo) or 1.0)
                raise PixelError("no window given and the series stores no Window Center/Width or VOI LUT")
            center, width = self.window
        lo = center - 0.5 - (width - 1) / 2
        out = (self.array - np.float32(lo)) / np.float32(max(width - 1, 1))
        return np.clip(out, 0.0, 1.0, out=out)


@dataclass(frozen=True)
class _Slice:
    file: int
    frame: int | None  # 0-based frame of an enhanced object; None for single-frame files
    geometry: SliceGeometry
    sop_uid: str


def _collect(headers: Sequence[Dataset]) -> list[_Slice]:
    slices: list[_Slice] = []
    for i, ds in enumerate(headers):
        uid = str(ds.get("SOPInstanceUID", ""))
        if is_enhanced(ds):
            slices.extend(_Slice(i, f, g, uid) for f, g in enumerate(frame_geometries(ds)))
        elif int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise GeometryError(f"instance {uid}: multi-frame without per-frame functional groups has no slice positions")
        else:
            slices.append(_Slice(i, None, slice_geometry(ds), uid))
    return slices


def _decode_slice(task: tuple[str, int]) -> np.ndarray:
    """Worker task: decode one single-frame file to float32 modality values."""
    path, max_inflated = task
    ds = read_dataset(path, max_inflated_bytes=max_inflated)
    stored = decode_instance(ds)
    out = np.empty(stored.shape, dtype=np.float32)
    try:
        apply_into(stored, modality_transform(ds), out)
    except (ValueError, TypeError) as exc:  # a Rescale/LUT value that does not fit the data: the input, not a bug
        raise DecodeError(f"{describe(ds)}: modality transform failed: {exc}") from exc
    return out


def _put(out: np.ndarray, k: int, value: np.ndarray, uid: str) -> None:
    """Copy one decoded slice into its slot; a slice of another shape names its instance, not a broadcast."""
    if value.shape != out.shape[1:]:
        raise DecodeError(f"instance {uid}: decoded to shape {value.shape}, the series' slices are {out.shape[1:]}")
    out[k] = value


def _fill_cpu(out: np.ndarray, paths: list[str], uids: list[str], max_inflated: int, workers: int,
              pool: DecodePool | None) -> str:
    tasks = [(p, max_inflated) for p in paths]
    if workers == 0 and pool is None:
        for k, task in enumerate(tasks):
            _put(out, k, _decode_slice(task), uids[k])
        return "cpu: in-process"
    own = pool is None
    pool = pool or DecodePool(workers)
    try:
        for k, result in pool.imap(_decode_slice, tasks):
            if isinstance(result, PixelError):
                raise result
            _put(out, k, result, uids[k])
    finally:
        if own:
            pool.close()
    return f"cpu: {pool.workers} worker process(es)"


def _fill_enhanced(out: np.ndarray, paths: Sequence[str], slot: dict[tuple[int, int], int], max_inflated: int) -> None:
    for i, path in enumerate(paths):
        ds = read_dataset(path, max_inflated_bytes=max_inflated)
        for f, stored in enumerate(iter_frames(ds)):
            if (i, f) in slot:
                if stored.shape != out.shape[1:]:
                    raise DecodeError(f"{describe(ds)}: frame {f + 1} decoded to shape {stored.shape}, "
                                      f"the volume's slices are {out.shape[1:]}")
                try:
                    apply_into(stored, modality_transform(ds, f), out[slot[(i, f)]])
                except (ValueError, TypeError) as exc:  # as in _decode_slice: the input's values
                    raise DecodeError(f"{describe(ds)}: modality transform of frame {f + 1} failed: {exc}") from exc


def _first(value: object) -> float:
    """First value of a possibly multi-valued DS (Window Center/Width may hold several)."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return float(value[0])  # type: ignore[index]
    return float(value)  # type: ignore[arg-type]


def _window(ds: Dataset) -> tuple[float, float] | None:
    src = ds
    if is_enhanced(ds):
        src = functional_group(ds, 0, "FrameVOILUTSequence") or ds
    c, w = src.get("WindowCenter"), src.get("WindowWidth")
    if c is None or w is None:
        return None
    return _first(c), _first(w)


def load_series(
    paths: Sequence[Path],
    *,
    workers: int | None = None,
    pool: DecodePool | None = None,
    gpu: str = "auto",
    max_inflated_bytes: int = DEFAULT_MAX_INFLATED_BYTES,
    max_volume_bytes: int = DEFAULT_MAX_VOLUME_BYTES,
) -> Volume:
    """Decode a series into a :class:`Volume`.

    Parameters
    ----------
    paths : sequence of pathlib.Path
        The instances of one series (any order), or one enhanced multi-frame file.
    workers : int, optional
        ``None``: one worker process per CPU core (in-process below 16 files);
        ``0``: decode in this process; ``N``: N worker processes.
    pool : DecodePool, optional
        A long-lived pool to use instead of starting one.
    gpu : {"auto", "cpu"}
        ``pixels.gpu_decode``: "auto" decodes JPEG/JPEG 2000/HTJ2K on a GPU when
        nvImageCodec and a GPU are present.
    max_inflated_bytes : int
        Bound for deflated datasets (PS3.5 A.5).
    max_volume_bytes : int
        ``pixels.max_volume_bytes``: the float32 volume may not be larger (0: no budget).

    Returns
    -------
    Volume

    Raises
    ------
    GeometryError
        Slices do not form one volume (missing positions, mixed sizes or
        orientations, duplicate positions).
    PixelDataError
        An instance's declared geometry disagrees with its Pixel Data, or the
        volume is over ``max_volume_bytes``; raised before the volume is allocated.
    DecodeError, UnsupportedTransferSyntaxError
        A slice cannot be decoded; the message names its SOP Instance UID.
    """
    if not paths:
        raise GeometryError("no instances given")
    headers = [read_dataset(p, max_inflated_bytes=max_inflated_bytes, stop_before_pixels=True) for p in paths]
    for h in headers:
        # The declaration sizes the output array below: check it against the data first.
        check_dataset(h, encapsulated=syntax_info(transfer_syntax_of(h)).encapsulated)
    slices = _collect(headers)
    problems = check_geometry([s.geometry for s in slices])
    fatal = [p for p in problems if p.rule in _FATAL_RULES]
    if fatal:
        raise GeometryError("; ".join(f"{p.rule}: {p.keyword} {p.detail}" for p in fatal))
    for p in problems:
        log.warning("series geometry: %s: %s", p.rule, p.detail)
    order = np.argsort(slice_distances([s.geometry for s in slices]), kind="stable")
    ordered = [slices[i] for i in order]
    g0 = ordered[0].geometry
    shape = (len(ordered), g0.rows, g0.columns)
    check_budget(int(np.prod(shape)) * 4, max_volume_bytes, key="pixels.max_volume_bytes",
                 what=f"volume of {shape[0]} slice{'s' * (shape[0] != 1)} {shape[1]}x{shape[2]} float32")
    out = np.empty(shape, dtype=np.float32)
    selection = select_decoder({transfer_syntax_of(h) for h in headers}, mode=gpu)
    log.info("decode path for %d slice(s): %s (%s)", len(ordered), selection.path, selection.reason)
    decoder = _fill(out, ordered, headers, [str(p) for p in paths], workers, pool, selection, max_inflated_bytes)
    affine, spacing = affine_and_spacing([s.geometry for s in ordered])
    h0 = headers[ordered[0].file]
    voi = Dataset()
    for kw in ("VOILUTSequence", "WindowCenter", "WindowWidth", "VOILUTFunction"):
        if kw in h0:
            voi[kw] = h0[kw]
    return Volume(
        array=out,
        affine=affine,
        spacing=spacing,
        sop_instance_uids=[s.sop_uid for s in ordered],
        study_instance_uid=str(h0.get("StudyInstanceUID", "")),
        series_instance_uid=str(h0.get("SeriesInstanceUID", "")),
        frame_of_reference_uid=str(h0.FrameOfReferenceUID) if "FrameOfReferenceUID" in h0 else None,
        modality=str(h0.get("Modality", "")),
        source_frames=[(s.frame or 0) + 1 for s in ordered],
        window=_window(h0),
        photometric_interpretation=str(h0.get("PhotometricInterpretation", "")),
        decoder=decoder,
        voi_source=voi,
    )


def _fill(
    out: np.ndarray,
    ordered: list[_Slice],
    headers: list[Dataset],
    paths: list[str],
    workers: int | None,
    pool: DecodePool | None,
    selection: DecoderSelection,
    max_inflated: int,
) -> str:
    """Decode every slice into ``out``; return a description of the path taken."""
    if any(s.frame is not None for s in ordered):
        _fill_enhanced(out, paths, {(s.file, s.frame): k for k, s in enumerate(ordered) if s.frame is not None}, max_inflated)
        return "cpu: in-process (enhanced multi-frame)"
    sorted_paths = [paths[s.file] for s in ordered]
    uids = [s.sop_uid for s in ordered]
    if selection.path == "gpu":
        for k, stored in decode_files_gpu(sorted_paths, max_inflated_bytes=max_inflated):
            if stored.shape != out.shape[1:]:
                raise DecodeError(f"instance {uids[k]}: decoded to shape {stored.shape}, the series' slices are {out.shape[1:]}")
            apply_into(stored, modality_transform(headers[ordered[k].file]), out[k])
        return f"gpu: {selection.reason}"
    if all(not syntax_info(transfer_syntax_of(h)).encapsulated for h in headers):
        # Native (uncompressed) pixel data runs no compiled codec, so nothing can crash the
        # process, and shipping slices between processes costs more than reading them here.
        return _fill_cpu(out, sorted_paths, uids, max_inflated, 0, None)
    if workers is None:
        workers = 0 if len(sorted_paths) < _POOL_MIN_FILES else default_workers(None)
    return _fill_cpu(out, sorted_paths, uids, max_inflated, workers, pool)
