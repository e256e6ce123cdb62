"""SQLite index of everything the node has acknowledged, and of study assembly.

:class:`~dicom_node.index.store.Index` owns the schema and read queries;
:class:`~dicom_node.index.writer.IndexWriter` is the single writer thread that
commits batches (group commit), so concurrent associations share fsyncs.
"""

from dicom_node.index.store import Index, InstanceRecord, SeriesState
from dicom_node.index.writer import IndexWriter

__all__ = ["Index", "IndexWriter", "InstanceRecord", "SeriesState"]
