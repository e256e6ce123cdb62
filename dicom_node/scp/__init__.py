"""DIMSE service class provider: association handling, C-ECHO, C-STORE, and Study Root
C-FIND / C-GET / C-MOVE for the node's own result objects (:mod:`dicom_node.scp.qr`).

The upper layer here is a lean, blocking, thread-per-association implementation
of the DICOM Upper Layer protocol (PS3.8) for the receive path. It reuses
pynetdicom for everything that is not on the hot path (A-ASSOCIATE PDU codec,
presentation context negotiation) and writes P-DATA fragments straight from the
socket buffer to the spool file. pynetdicom's own association reactor polls with
1 ms sleeps and 4 KiB reads, which measured at about a third of DCMTK
``storescp``'s throughput here; see ``bench/ingest.py``.
"""
