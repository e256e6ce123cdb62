"""DICOM JSON metadata of stored instances (PS3.18 F.2), bulk data by BulkDataURI, never inline.

Headers are read with ``stop_before_pixels`` and ``defer_size`` so a series of 512
CT slices costs one header parse per file: Pixel Data is never read (its presence
follows from the Image Pixel module: ``Rows`` and ``BitsAllocated``), and other
values over :data:`BULK_THRESHOLD` bytes are read only to be replaced by a URI.
A bulk element's URI is ``<instance URL>/bulkdata/<tag path>``, the tag path being
``7FE00010`` or, inside sequences, ``00540016/0/00181078`` (tag, item index, tag).
"""

from __future__ import annotations

import json
import threading
import uuid
from collections import OrderedDict
from collections.abc import MutableSequence
from pathlib import Path

import pydicom
from pydicom import config
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.hooks import hooks, raw_element_value, raw_element_vr
from pydicom.jsonrep import convert_to_python_number
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag
from pydicom.values import convert_value

from dicom_node.archive.retrieve import BadRequest, Located
from dicom_node.errors import PixelError

#: Binary values longer than this go by BulkDataURI (bytes).
BULK_THRESHOLD = 1024
#: VRs whose long values are bulk data (PS3.18 8.7.3.5.1; UN included: its bytes are opaque).
BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
PIXEL_DATA = 0x7FE00010
_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
#: Explicit VRs whose values are text or numbers, converted without a DataElement (PN, AT, SQ and binary not).
_PLAIN_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "SH", "SL", "SS", "ST", "TM",
                        "UC", "UI", "UL", "UR", "US", "UT"})
#: LUT descriptors: pydicom fixes their first value's sign while reading (pydicom.tag._LUT_DESCRIPTOR_TAGS).
_LUT_DESCRIPTORS = frozenset({0x00281101, 0x00281102, 0x00281103, 0x00283002})
_CHARSET = 0x00080005

JsonValue = dict[str, object]

#: Instances whose JSON is kept (about 2-4 KB each for CT): a 512-slice series and then some.
CACHE_ENTRIES = 4096
#: Stands for an instance's URL in cached JSON; random, so no stored value can contain it.
_URL_TOKEN = f"@{uuid.uuid4().hex}@"
_cache: OrderedDict[tuple[str, int, int], str] = OrderedDict()
_cache_lock = threading.Lock()


def read_header(path: Path) -> Dataset:
    """The dataset without Pixel Data; long values deferred (read only when touched)."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True, defer_size=BULK_THRESHOLD)
    except (InvalidDicomError, OSError, ValueError) as exc:
        raise PixelError(f"cannot read a stored instance's header: {exc}") from exc


def _is_bulk(elem: DataElement) -> bool:
    if elem.VR not in BULK_VRS or elem.is_empty:
        return False
    value = elem.value
    return isinstance(value, bytes | bytearray) and len(value) > BULK_THRESHOLD


def _plain_json(ds: Dataset, tag: BaseTag, encoding: str | MutableSequence[str]) -> JsonValue | None:
    """pydicom's JSON of a plain element still in raw form, without making a DataElement; None: not plain.

    Plain: explicit VR text or numbers read with pydicom's default hooks, not private, not a LUT
    descriptor (whose sign pydicom fixes), value present. Its value is converted by pydicom's own
    :func:`~pydicom.values.convert_value` with the encoding ``ds[tag]`` would use and goes into JSON as
    ``DataElement.to_json_dict`` puts it; anything else, or any failure, takes pydicom's whole path.
    """
    raw = ds._dict[tag]
    if not isinstance(raw, RawDataElement) or raw.VR not in _PLAIN_VRS or raw.value is None \
            or tag.is_private or tag in _LUT_DESCRIPTORS or tag == _CHARSET:
        return None
    try:
        value = convert_value(raw.VR, raw, encoding)
        if value is None or value == "" or (isinstance(value, list | MultiValue) and not value):
            return {"vr": raw.VR}
        values = list(value) if isinstance(value, list | MultiValue) and len(value) > 1 else [value]
        if any(isinstance(v, list | MultiValue | bytes) for v in values):
            return None
        return {"vr": raw.VR, "Value": convert_to_python_number(values, raw.VR)}
    except Exception:  # noqa: BLE001  # pydicom's own path then raises or warns as it always did
        return None


def _default_reading() -> bool:
    """True while pydicom converts raw elements with its default hooks and no callback (the plain path's terms)."""
    return (config.data_element_callback is None and not config.datetime_conversion and not hooks.raw_element_kwargs
            and hooks.raw_element_vr is raw_element_vr and hooks.raw_element_value is raw_element_value)


def dataset_json(ds: Dataset, bulk_base: str, path: tuple[str, ...] = ()) -> dict[str, JsonValue]:
    """The DICOM JSON model of ``ds``; bulk values become BulkDataURIs under ``bulk_base``.

    Plain text and number elements (most of a header) are converted straight from their raw bytes
    (:func:`_plain_json`), a cold series of 512 CT headers being mostly this conversion; the rest goes
    through pydicom's DataElement and ``to_json_dict``.
    """
    out: dict[str, JsonValue] = {}
    fast = _default_reading()
    encoding = ds.original_character_set or ds._character_set
    for tag in sorted(ds._dict):
        plain = _plain_json(ds, tag, encoding) if fast else None
        if plain is not None:
            out[f"{int(tag):08X}"] = plain
            continue
        elem = ds[tag]  # loads a deferred value once, converting it
        key = f"{int(elem.tag):08X}"
        if elem.VR == "SQ":
            items = [dataset_json(item, bulk_base, (*path, key, str(i))) for i, item in enumerate(elem.value)]
            out[key] = {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
        elif _is_bulk(elem):
            out[key] = {"vr": elem.VR, "BulkDataURI": f"{bulk_base}/{'/'.join((*path, key))}"}
        else:
            out[key] = elem.to_json_dict(None, BULK_THRESHOLD)
    return out


def instance_json(item: Located, instance_url: str) -> dict[str, JsonValue]:
    """The metadata of one instance; Pixel Data, when the instance has pixels, by BulkDataURI."""
    ds = read_header(item.path)
    bulk_base = f"{instance_url}/bulkdata"
    out = dataset_json(ds, bulk_base)
    if "Rows" in ds and "BitsAllocated" in ds:
        encapsulated = bool(getattr(ds, "file_meta", None) and ds.file_meta.TransferSyntaxUID.is_encapsulated)
        vr = "OB" if encapsulated or int(ds.BitsAllocated) <= 8 else "OW"
        out[f"{PIXEL_DATA:08X}"] = {"vr": vr, "BulkDataURI": f"{bulk_base}/{PIXEL_DATA:08X}"}
    return dict(sorted(out.items()))


def parse_tag_path(text: str) -> tuple[list[tuple[BaseTag, int]], BaseTag]:
    """``00540016/0/00181078`` -> ([(sequence tag, item index)], element tag).

    Raises
    ------
    BadRequest
        A malformed path.
    """
    parts = [p for p in text.split("/") if p]
    if not parts or len(parts) % 2 == 0:
        raise BadRequest(f"bulk data path {text!r} is not TAG or TAG/ITEM/.../TAG")
    try:
        tags = [Tag(p) for p in parts[0::2]]
        items = [int(p) for p in parts[1::2]]
    except (ValueError, OverflowError) as exc:
        raise BadRequest(f"bulk data path {text!r}: {exc}") from exc
    return list(zip(tags[:-1], items, strict=True)), tags[-1]


def bulk_value(item: Located, text: str) -> tuple[str, bytes]:
    """The VR and value bytes of a non-pixel bulk element (little endian, as pydicom holds them).

    Raises
    ------
    BadRequest
        Malformed path, or one that names no binary value.
    """
    steps, tag = parse_tag_path(text)
    if int(tag) in _PIXEL_TAGS and not steps:
        raise BadRequest("pixel data is served by frames")  # the router sends Pixel Data through frames
    ds: Dataset = read_header(item.path)
    for seq, index in steps:
        elem = ds.get(seq)
        if elem is None or elem.VR != "SQ" or not 0 <= index < len(elem.value):
            raise BadRequest(f"no item {index} of ({int(seq):08X}) in this instance")
        ds = elem.value[index]
    elem = ds.get(tag)
    if elem is None or elem.VR not in BULK_VRS or not isinstance(elem.value, bytes | bytearray):
        raise BadRequest(f"({int(tag):08X}) is not a binary element of this instance")
    return str(elem.VR), bytes(elem.value)


def instance_json_text(item: Located, instance_url: str) -> str:
    """:func:`instance_json` as JSON text, cached per file (path, modification time and size).

    Stored files never change under one name (the spool names a file by its SOP Instance UID and
    replaces it by rename), so the key is enough; the instance's URL is filled in on the way out,
    since it follows the request's host.
    """
    st = item.path.stat()
    key = (str(item.path), st.st_mtime_ns, st.st_size)
    with _cache_lock:
        text = _cache.get(key)
        if text is not None:
            _cache.move_to_end(key)
    if text is None:
        text = json.dumps(instance_json(item, _URL_TOKEN), separators=(",", ":"))
        with _cache_lock:
            _cache[key] = text
            while len(_cache) > CACHE_ENTRIES:
                _cache.popitem(last=False)
    return text.replace(_URL_TOKEN, instance_url)
