"""Clara AIAA compatibility: the AIAA model config translated to and from this node's model spec.

The REST routes of the AIAA API (``/admin/model/{model}``, ``/v1/models``, ``/session/``)
live in :mod:`dicom_node.api`; this package holds what they translate, so the translation
is tested without a server and the routes stay thin.
"""
