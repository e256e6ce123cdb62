"""Pull-based ingest: DICOMweb and DIMSE sources the node fetches studies from.

- :mod:`.config` – the ``[sources]`` section: remote DIMSE nodes and pollers.
- :mod:`.base` – what a source answers (study/series summaries) and the
  :class:`~dicom_node.sources.base.Source` protocol both kinds implement.
- :mod:`.sink` – stores retrieved instances through the same durable path as
  C-STORE (spool file fsynced, index row committed) under a pseudo-association,
  so assembly, routing and results treat pulled studies like pushed ones.
"""
