"""The persistence layer: the one SQLite index of the node, its schema and every SQL statement.

No module outside this package holds SQL (``tests/test_arch_sql.py`` checks it); callers use the
query functions, one module per table or group of tables:

- :mod:`~dicom_node.index.schema`: the tables and their numbered migrations (``PRAGMA user_version``);
- :mod:`~dicom_node.index.store`: :class:`Index` (opening runs pending migrations; reader connections);
- :mod:`~dicom_node.index.writer`: :class:`IndexWriter`, the single writer thread (group commit);
- :mod:`~dicom_node.index.ops` (writes) and :mod:`~dicom_node.index.instances` (reads): instances,
  series, associations and completion events;
- :mod:`~dicom_node.index.nodes`: node ids and heartbeats of the nodes sharing a PostgreSQL index,
  and the advisory lock that serialises their assembly decisions;
- :mod:`~dicom_node.index.jobs`, :mod:`~dicom_node.index.results`, :mod:`~dicom_node.index.deliveries`,
  :mod:`~dicom_node.index.invocations`, :mod:`~dicom_node.index.sources`, :mod:`~dicom_node.index.sessions`:
  their tables;
- :mod:`~dicom_node.index.qr`, :mod:`~dicom_node.index.metrics`, :mod:`~dicom_node.index.worklist`:
  the queries of the Q/R SCP, ``/metrics`` and ``/v1/worklist``.

Functions take a connection (a reader's, or the writer's inside its transaction) and typed
arguments, and return plain values, dataclasses or dicts, never cursors. A second implementation
(PostgreSQL) would provide the same functions; constructs only SQLite has are marked where used.
"""

from dicom_node.index.store import Index, InstanceRecord, SeriesState
from dicom_node.index.writer import IndexWriter

__all__ = ["Index", "IndexWriter", "InstanceRecord", "SeriesState"]
