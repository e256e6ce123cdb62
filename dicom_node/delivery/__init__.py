"""Result delivery: C-STORE (PS3.4 Annex B) and STOW-RS (PS3.18 10.5) with retries and a ledger.

- :mod:`~dicom_node.config.delivery` — the ``[delivery]`` section: destinations, retry numbers, known peers
  (peers, auth, the retry policy and the SSRF policy are shared plumbing in :mod:`dicom_node.net`);
- :mod:`~dicom_node.delivery.dimse` — pynetdicom Storage SCU with transfer-syntax fallback;
- :mod:`~dicom_node.delivery.stowrs` — dicomweb-client STOW-RS;
- :mod:`~dicom_node.delivery.objects` — objects under a bucket prefix (GCS, Azure Blob, S3);
- :mod:`~dicom_node.delivery.classify` — retry / dead-letter classification;
- :mod:`~dicom_node.index.deliveries` — the ``deliveries`` table (never send a result twice);
- :mod:`~dicom_node.delivery.deliverer` — :class:`Deliverer`, used by the job worker.

Submodules import pynetdicom and dicomweb-client; this package imports nothing
heavy so configuration loading stays cheap.
"""

from __future__ import annotations

from dicom_node.config.delivery import DeliveryConfig

__all__ = ["DeliveryConfig"]
