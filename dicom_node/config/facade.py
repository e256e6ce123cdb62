"""Configuration of the Triton facade's bucket endpoints: the ``[facade]`` section.

Read by :mod:`dicom_node.api.routers.facade` (``POST /bucket_invocations`` on Google
Cloud Storage, ``POST /bucket_invocations_azure_uae`` on Azure Blob Storage)::

    [facade]
    gcs_input_bucket = "hospital-inputs"        # Input-Bucket-Name when the request names none
    gcs_output_bucket = "hospital-results"      # Output-Bucket-Name when the request names none
    azure_input_container = "dicom-in"
    azure_output_container = "dicom-out"
    output_prefix = "results"                   # results go to <bucket>/<output_prefix>/<request_uuid>/
    max_folder_objects = 2000                   # objects one Input-Location folder may hold
    max_folder_bytes = 8589934592               # bytes its DICOM files may hold in all (fetched to disk)

The buckets named here, and those a request names, must still be allowlisted in
``[objects.gcs] allowed_buckets`` / ``[objects.azure] allowed_containers``: this section
only chooses defaults, it allows nothing.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

from dicom_node.config.objects import BUCKET_RE

__all__ = ["FacadeConfig"]

#: An output prefix: folder names of letters, digits and ``._-``, joined by ``/`` (no ``..``, no leading ``/``).
_PREFIX_RE = re.compile(r"^([A-Za-z0-9_-][A-Za-z0-9._-]{0,127})(/[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}){0,7}$")


class FacadeConfig(BaseModel):
    """``[facade]``: default buckets and bounds of the Triton facade's bucket endpoints."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gcs_input_bucket: str | None = None
    gcs_output_bucket: str | None = None
    azure_input_container: str | None = None
    azure_output_container: str | None = None
    #: Folder under the output bucket that results are written beneath ("" = the bucket's root).
    output_prefix: str = "results"
    #: Most objects one ``Input-Location`` folder may hold; a larger folder is refused (400) before anything runs.
    max_folder_objects: int = Field(2000, ge=1, le=100_000)
    #: Most bytes one ``Input-Location`` folder's DICOM files may hold in all (they are fetched to local disk
    #: before the run); a larger folder is refused (413) before anything runs. Default 8 GiB.
    max_folder_bytes: int = Field(8 * 1024**3, ge=1024 * 1024)

    @field_validator("gcs_input_bucket", "gcs_output_bucket", "azure_input_container", "azure_output_container")
    @classmethod
    def _bucket(cls, value: str | None) -> str | None:
        if value is not None and not BUCKET_RE.fullmatch(value):
            raise ValueError(f"{value!r} is not a bucket/container name (3-63 of a-z 0-9 . _ -)")
        return value

    @field_validator("output_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        value = value.strip("/")
        if value and (not _PREFIX_RE.fullmatch(value) or ".." in value.split("/")):
            raise ValueError(f"{value!r} is not a folder path (names of A-Z a-z 0-9 . _ - joined by '/')")
        return value
