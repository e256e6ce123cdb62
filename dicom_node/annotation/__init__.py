"""Interactive annotation (Clara AIAA, issue 17): guidance point maps, and polygon geometry.

- :mod:`~dicom_node.annotation.guidance`: DExtr3D extreme points and DeepGrow clicks as the
  point-map channels a ``[guidance]`` model takes (``inference.spec.Guidance``);
- :mod:`~dicom_node.annotation.polygons`: mask -> per-slice polygons (``/v1/mask2polygon``) and
  the single-vertex edit of ``/v1/fixpolygon`` with its neighbourhood propagation, on
  scikit-image's ``find_contours`` and ``draw.polygon``.

NumPy only; the REST routes (``dicom_node.api.routers.aiaa_infer`` / ``aiaa_geometry``) parse
requests and call these.
"""
