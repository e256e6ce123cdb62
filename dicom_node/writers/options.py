"""Settings shared by the result writers (SEG and SR series attributes, equipment, UID root).

:class:`WriterOptions` is built from the ``[results]`` config section when one
exists (:meth:`WriterOptions.from_config`) and falls back to its defaults
otherwise, so the writers run with no configuration at all.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Literal

from dicom_node import __version__
from dicom_node.errors import WriterError
from dicom_node.writers.uids import DEFAULT_UID_ROOT, check_uid_root
from inference.spec import ModelSpec

__all__ = ["WriterOptions"]

#: Long String (LO) values hold at most 64 characters (PS3.5 6.2).
_LO_MAX = 64
#: A model name is never cut below this many characters to fit a description.
_MIN_MODEL_CHARS = 8

#: Default Series Descriptions: they name the model and version, so two models'
#: results on one study are told apart in a PACS series list.
DEFAULT_SEG_DESCRIPTION = "{model} {version} AI segmentation"
DEFAULT_SR_DESCRIPTION = "{model} {version} AI measurement report"


@dataclass(frozen=True)
class WriterOptions:
    """How result objects are labelled; every field has a working default.

    Attributes
    ----------
    uid_root : str
        Root of the derived result UIDs (PS3.5 9.1); ``"2.25."`` is the UUID arc.
    seg_series_number, sr_series_number : int or None
        Series Number (0020,0011) of the SEG and SR series of *every* model
        when set; ``None`` (the default) numbers each model's series itself
        (:meth:`series_number`). Never random.
    seg_series_description, sr_series_description : str
        Series Description (0008,103E); ``{model}`` and ``{version}`` are replaced.
    manufacturer, manufacturer_model_name, device_serial_number : str
        General Equipment module (PS3.3 C.7.5.1) of the results.
    software_version : str
        Software Versions (0018,1020); defaults to dicom-node's version.
    node_name : str
        Name of the node as a device observer in the SR (TID 1004 Device Observer Name).
    institution_name : str or None
        Institution Name (0008,0080), when the site wants it set.
    segmentation_type : {"BINARY", "FRACTIONAL"}
        Segmentation Type (0062,0001): masks, or probabilities scaled to 0..255.
    """

    uid_root: str = DEFAULT_UID_ROOT
    seg_series_number: int | None = None
    seg_series_description: str = DEFAULT_SEG_DESCRIPTION
    sr_series_number: int | None = None
    sr_series_description: str = DEFAULT_SR_DESCRIPTION
    manufacturer: str = "dicom-node"
    manufacturer_model_name: str = "dicom-node"
    device_serial_number: str = "0"
    software_version: str = __version__
    node_name: str = "dicom-node"
    institution_name: str | None = None
    segmentation_type: Literal["BINARY", "FRACTIONAL"] = "BINARY"

    def __post_init__(self) -> None:
        check_uid_root(self.uid_root)
        for name in ("seg_series_number", "sr_series_number"):
            number = getattr(self, name)
            # highdicom and PS3.3 C.7.3.1 want a positive Series Number.
            if number is not None and not 1 <= number <= 2**31 - 1:
                raise WriterError(f"results.{name} must be between 1 and 2147483647, got {number!r}")
        for kind in ("seg", "sr"):
            self.series_description(kind, "model", "1")  # a bad template fails here, not at the first job
        if self.segmentation_type not in ("BINARY", "FRACTIONAL"):
            raise WriterError(f"results.segmentation_type must be BINARY or FRACTIONAL, got {self.segmentation_type!r}")

    @classmethod
    def from_config(cls, section: Any | None) -> WriterOptions:
        """Build options from a ``[results]`` config section (any object with matching attributes).

        Attributes the section does not have keep their defaults; ``None`` gives all defaults.

        Raises
        ------
        WriterError
            A value is out of range (the message names the ``results.`` key).
        """
        if section is None:
            return cls()
        values = {f.name: getattr(section, f.name) for f in fields(cls) if getattr(section, f.name, None) is not None}
        return cls(**values)

    def with_changes(self, **changes: Any) -> WriterOptions:
        """A copy with some fields replaced (validated again)."""
        return replace(self, **changes)

    def series_number(self, kind: Literal["seg", "sr"], spec: ModelSpec) -> int:
        """Series Number (0020,0011) of model ``spec``'s ``kind`` series.

        The configured ``results.<kind>_series_number`` when set (a site that
        wants one number for all AI results), else the model's own:
        :attr:`inference.spec.ModelSpec.result_series_number` for the SEG and
        the next number for the SR. Deterministic: the same model always gets
        the same numbers (PS3.3 C.7.3.1 leaves the value to the creator).
        """
        configured = self.seg_series_number if kind == "seg" else self.sr_series_number
        if configured is not None:
            return configured
        own = spec.result_series_number
        return own if kind == "seg" else own + 1

    def series_description(self, kind: Literal["seg", "sr"], model: str, version: str) -> str:
        """The description of the ``kind`` series with ``{model}``/``{version}`` filled.

        Series Description (0008,103E) is an LO of at most 64 characters
        (PS3.5 6.2): a long model name is shortened first (to no less than
        8 characters) so the version and the kind stay readable, then the text is cut.
        """
        template = self.seg_series_description if kind == "seg" else self.sr_series_description
        try:
            text = template.format(model=model, version=version)
            keep = len(model)
            while len(text) > _LO_MAX and keep > _MIN_MODEL_CHARS:
                keep = max(_MIN_MODEL_CHARS, keep - (len(text) - _LO_MAX))
                text = template.format(model=model[:keep], version=version)
        except (KeyError, IndexError, ValueError) as exc:
            raise WriterError(f"results.{kind}_series_description {template!r}: only {{model}} and {{version}} may be used") from exc
        return text[:_LO_MAX]
