"""What routing and the pipeline read about a stored series."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

from dicom_node.errors import PixelError
from dicom_node.index import instances
from dicom_node.pixels.decode import read_dataset
from dicom_node.routing import SeriesFacts
from dicom_node.spool import Spool

log = logging.getLogger(__name__)

def series_files(conn: sqlite3.Connection, spool: Spool, series_uid: str) -> list[Path]:
    """Spool paths of every indexed instance of a series."""
    return spool.local_many(instances.series_paths(conn, series_uid))


def series_facts(conn: sqlite3.Connection, spool: Spool, series_uid: str) -> SeriesFacts:
    """Routing facts of a series: index columns plus a few header attributes of one instance."""
    row = instances.series_facts(conn, series_uid)
    if row is None:
        return SeriesFacts("", "", "", "", "", "", 0)
    body_part = description = ""
    try:
        # The node's bounded reader, not dcmread: pydicom inflates a Deflated file whole, and a
        # 1.6 MB file with 1.5 GiB of zeros as Pixel Data then costs 3 GiB just to route it.
        ds = read_dataset(spool.local(row.path), stop_before_pixels=True)
        body_part = str(ds.get("BodyPartExamined", "") or "")
        description = str(ds.get("SeriesDescription", "") or "")
    except PixelError as exc:  # read_dataset wraps unreadable files in DecodeError
        # Routing then sees empty values; the pipeline reports unreadable files per instance.
        log.warning("cannot read routing attributes series_uid=%s error=%s", series_uid, type(exc).__name__)
    return SeriesFacts(
        calling_ae=row.calling_ae, called_ae=row.called_ae, modality=row.modality or "",
        sop_class_uid=row.sop_class_uid, body_part_examined=body_part, series_description=description,
        instances=row.instance_count, source=row.source or "",
    )
