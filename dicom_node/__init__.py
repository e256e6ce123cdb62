"""dicom-node: a DICOM node that connects PACS to GPU and CPU models."""

__version__ = "0.1.0"

#: Implementation Class UID written into File Meta (PS3.7 D.3.3.2); under the 2.25 UUID arc.
IMPLEMENTATION_CLASS_UID = "2.25.229117307866493417352402787006413374481"
IMPLEMENTATION_VERSION_NAME = "DICOM_NODE_010"
