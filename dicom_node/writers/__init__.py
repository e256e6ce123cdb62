"""Result writers: model output -> standard DICOM objects that a PACS stores and viewers show.

- :mod:`~dicom_node.writers.seg`: Segmentation (PS3.3 A.51) with highdicom;
- :mod:`~dicom_node.writers.sr`: Comprehensive 3D SR following TID 1500
  Measurement Report (PS3.16), TID 1411 groups for segments, TID 1501 for
  classifications;
- :mod:`~dicom_node.writers.uids`: deterministic result UIDs (PS3.5 9.1);
- :mod:`~dicom_node.writers.readback`: every object is re-read and compared;
- :mod:`~dicom_node.writers.results`: one run -> checked SEG and SR bytes.

Errors are :class:`~dicom_node.errors.WriterError`; highdicom and pydicom
errors are wrapped at this package's boundary.
"""

from __future__ import annotations

from dicom_node.writers.options import WriterOptions
from dicom_node.writers.results import ResultObjects, build_results, read_headers, select_sources
from dicom_node.writers.uids import ResultUids, derive_uid, result_uids

__all__ = [
    "ResultObjects", "ResultUids", "WriterOptions", "build_results", "derive_uid", "read_headers", "result_uids", "select_sources",
]
