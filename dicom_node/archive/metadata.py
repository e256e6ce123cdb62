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
from pathlib import Path

import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.tag import BaseTag, Tag

from dicom_node.archive.retrieve import BadRequest, Located
from dicom_node.errors import PixelError

#: Binary values longer than this go by BulkDataURI (bytes).
BULK_THRESHOLD = 1024
#: VRs whose long values are bulk data (PS3.18 8.7.3.5.1; UN included: its bytes are opaque).
BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
PIXEL_DATA = 0x7FE00010
_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})

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


def dataset_json(ds: Dataset, bulk_base: str, path: tuple[str, ...] = ()) -> dict[str, JsonValue]:
    """The DICOM JSON model of ``ds``; bulk values become BulkDataURIs under ``bulk_base``."""
    out: dict[str, JsonValue] = {}
    for elem in ds:  # iterating loads each deferred value once, converting it
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
