"""Shared network plumbing (layer 2): outbound policy, the one HTTP client, retries, auth, DICOM peers.

- :mod:`~dicom_node.net.policy` — :class:`OutboundPolicy`, the one SSRF check with DNS pinning;
- :mod:`~dicom_node.net.http` — pinned ``requests`` sessions and the :class:`Outbound` service;
- :mod:`~dicom_node.net.retry` — :class:`RetryPolicy` and Retry-After parsing;
- :mod:`~dicom_node.net.auth` — HTTP auth settings (none, bearer, basic);
- :mod:`~dicom_node.net.peers` — :class:`DimsePeer` and :class:`AssociationProbe`.

Nothing here imports the configuration, the API, delivery, sources or the SCP;
those import from here. Submodules are imported by name (this package imports
none of them) so a configuration load does not pull in the HTTP stack.
"""
