"""Model specs: the validated contents of ``engines/<name>/model.toml``.

The spec borrows from Triton's ``config.pbtxt`` (tensor names, data types,
dims *without* the batch dimension, ``max_batch_size``, ``-1`` for dynamic
dims) and from MONAI bundles (pre/post-processing and labels stated next to the
network). It is small on purpose: one model, one ONNX file, one input tensor
fed by the batcher. Validation happens at load with pydantic v2; an invalid
spec raises :class:`~inference.errors.SpecError` naming the file and the key.

The ``contract`` table is plain data (modalities, SOP classes, tags, ...): this
package knows no DICOM, ``dicom_node.validation`` interprets it.
"""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from inference.errors import ParameterError, SpecError
from inference.spec_tables import EmbeddingSpec, Guidance
from inference.spec_tables import Strict as _Strict
from inference.spec_tables import TextSpec as TextSpec  # re-exported: callers name it from here
from inference.triton_pool import TritonTable

BACKEND_NAMES = ("tensorrt", "onnxruntime", "triton")
BackendName = Literal["tensorrt", "onnxruntime", "triton"]
#: Tensor data types, spelled as NumPy names (Triton's TYPE_FP32 is "float32").
DType = Literal["float32", "float16", "int64", "int32", "uint8", "bool"]

#: Result series numbers a model gets when its spec names none: 9100..9998, even, so
#: the SEG/SR pair (n, n + 1) of two models never interleave, and well above the
#: small numbers modalities give their own series.
DERIVED_SERIES_FIRST = 9100
DERIVED_SERIES_SLOTS = 450
#: Largest ``series_number``: its SR series is ``series_number + 1``, and Series
#: Number (0020,0011) is an IS, a signed 32-bit value (PS3.5 6.2).
MAX_SERIES_NUMBER = 2**31 - 2




class GeometryRules(_Strict):
    """Volume rules (same keys as ``dicom_node.validation``'s ``[geometry]`` table)."""

    volume: bool = False
    spacing_tolerance: float = Field(0.01, ge=0.0)
    orientation: Literal["", "axial", "sagittal", "coronal"] = ""
    max_obliquity_deg: float = Field(5.0, ge=0.0, le=90.0)


class Contract(_Strict):
    """Input contract as plain data: the ``[input]`` table that ``dicom_node.validation`` consumes.

    Keys mirror ``dicom_node.validation.contract.Contract`` (DICOM keywords, UIDs,
    enumerated values; empty lists mean "any"); this package does not interpret them.
    """

    name: str = ""
    description: str = ""
    modalities: list[str] = Field(default_factory=list)
    sop_classes: list[str] = Field(default_factory=list)
    transfer_syntaxes: list[str] = Field(default_factory=list)
    required_tags: list[str] = Field(default_factory=list)
    required_any: list[list[str]] = Field(default_factory=list)
    photometric_interpretations: list[str] = Field(default_factory=list)
    samples_per_pixel: list[int] = Field(default_factory=list)
    bits_allocated: list[int] = Field(default_factory=list)
    bits_stored: list[int] = Field(default_factory=list)
    min_slices: int = Field(1, ge=1)
    geometry: GeometryRules = Field(default_factory=GeometryRules)


class Window(_Strict):
    """Clip to ``[center - width/2, center + width/2]`` and scale to ``[0, 1]``."""

    kind: Literal["window"]
    center: float
    width: float = Field(gt=0)


class Normalize(_Strict):
    """``(x - mean) / std``, optionally after clipping to ``clip``."""

    kind: Literal["normalize"]
    mean: float = 0.0
    std: float = Field(1.0, gt=0)
    clip: tuple[float, float] | None = None


class NoIntensity(_Strict):
    """Feed the rescaled values unchanged."""

    kind: Literal["none"]


Intensity = Annotated[Window | Normalize | NoIntensity, Field(discriminator="kind")]


class SlidingWindow(_Strict):
    """Tiling of a 3D volume: tile size (slices, rows, cols), overlap fraction, blending."""

    roi: tuple[int, int, int]
    overlap: float = Field(0.25, ge=0.0, lt=1.0)
    blend: Literal["constant", "gaussian"] = "gaussian"

    @field_validator("roi")
    @classmethod
    def _positive(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        if min(v) < 1:
            raise ValueError("roi sizes must be >= 1")
        return v


class Preprocessing(_Strict):
    """How a volume becomes model inputs."""

    #: Apply the modality LUT (HU for CT); done by the decoder, recorded so it is not forgotten.
    rescale: bool = True
    intensity: Intensity = Field(default_factory=lambda: NoIntensity(kind="none"))
    #: "2d": one work item per slice; "3d": sliding-window tiles of the volume.
    mode: Literal["2d", "3d"] = "2d"
    #: 2D only: resize each slice to (rows, cols) before the model and back after.
    resize: tuple[int, int] | None = None
    sliding_window: SlidingWindow | None = None

    @model_validator(mode="after")
    def _mode_fields(self) -> Preprocessing:
        if self.mode == "3d" and self.sliding_window is None:
            raise ValueError("mode = '3d' needs a [preprocessing.sliding_window] table")
        if self.mode == "2d" and self.sliding_window is not None:
            raise ValueError("sliding_window applies to mode = '3d' only")
        if self.resize is not None and min(self.resize) < 1:
            raise ValueError("resize sizes must be >= 1")
        return self


class TensorSpec(_Strict):
    """One input or output tensor; ``dims`` exclude the batch dimension, -1 is dynamic."""

    name: str = Field(min_length=1)
    dtype: DType = "float32"
    dims: list[int] = Field(min_length=1)

    @field_validator("dims")
    @classmethod
    def _dims(cls, v: list[int]) -> list[int]:
        if any(d == 0 or d < -1 for d in v):
            raise ValueError("dims must be positive or -1 (dynamic)")
        return v


class Tensors(_Strict):
    """Model I/O: the batcher feeds ``inputs[0]``; ``max_batch`` caps one request."""

    max_batch: int = Field(16, ge=1, le=1024)
    #: Dims of the largest input the TensorRT optimization profile accepts (for -1 dims).
    max_dims: list[int] | None = None
    #: Dims TensorRT optimizes for (defaults to max_dims).
    opt_dims: list[int] | None = None
    inputs: list[TensorSpec] = Field(min_length=1, max_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)


class Postprocessing(_Strict):
    """From raw outputs to a result: activation over channels (axis 1), then a decision."""

    output: str | None = None
    activation: Literal["none", "sigmoid", "softmax"] = "none"
    decision: Literal["none", "threshold", "argmax"] = "threshold"
    #: Default threshold; callers override it with the ``threshold`` parameter.
    threshold: float = Field(0.25, ge=0.0, le=1.0)


class Code(_Strict):
    """A coded concept (PS3.3 Table 8.8-1): code value, scheme designator, meaning."""

    value: str = Field(min_length=1, max_length=64)
    scheme: str = Field("SCT", min_length=1, max_length=16)
    meaning: str = Field(min_length=1, max_length=64)


class Label(_Strict):
    """One segment or class: output channel, name, SNOMED CT category and type, colour."""

    channel: int = Field(ge=0)
    name: str = Field(min_length=1, max_length=64)
    category: Code
    type: Code
    color: tuple[int, int, int] = (255, 0, 0)

    @field_validator("color")
    @classmethod
    def _rgb(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        if any(not 0 <= c <= 255 for c in v):
            raise ValueError("color components must be in 0..255")
        return v


class Parameter(_Strict):
    """A caller-overridable parameter with its default and bounds."""

    type: Literal["float", "int", "bool", "int_list"]
    default: float | int | bool | list[int]
    min: float | None = None
    max: float | None = None
    description: str = ""

    @model_validator(mode="after")
    def _default_ok(self) -> Parameter:
        coerce_parameter("default", self, self.default)
        return self


class ModelSpec(_Strict):
    """The whole spec of one model (see the module docstring)."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")
    #: Written as Algorithm Version and in Series Descriptions (LO, PS3.5 6.2): no backslash, no control characters.
    version: str = Field(min_length=1, max_length=32, pattern=r"^[^\\\x00-\x1f\x7f]+$")
    task: Literal["segmentation", "classification", "embedding"]
    description: str = ""
    #: Hidden models (test fixtures) are not offered to users by ``models list``.
    hidden: bool = False
    #: Series Number (0020,0011) of this model's SEG series; its SR series gets the
    #: next number. Absent: derived from the name (:attr:`result_series_number`).
    series_number: int | None = Field(None, ge=1, le=MAX_SERIES_NUMBER, strict=True)
    onnx: str = "model.onnx"
    backends: list[BackendName] = Field(default_factory=list)
    precision: Literal["fp32", "fp16"] = "fp32"
    #: The input contract (``[input]`` table), plain data for ``dicom_node.validation``.
    input: Contract = Field(default_factory=Contract)
    preprocessing: Preprocessing = Field(default_factory=Preprocessing)
    tensors: Tensors
    postprocessing: Postprocessing = Field(default_factory=Postprocessing)
    labels: list[Label] = Field(default_factory=list)
    parameters: dict[str, Parameter] = Field(default_factory=dict)
    #: Embedding models: the answer's fields and an optional text tower (``[embedding]``).
    embedding: EmbeddingSpec = Field(default_factory=EmbeddingSpec)
    #: Interactive annotation models: point-map channels after the image channel (``[guidance]``).
    guidance: Guidance | None = None
    #: The Triton servers of this model (``[triton]``); empty: every server the node lists.
    triton: TritonTable = Field(default_factory=TritonTable)

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        out_names = [t.name for t in self.tensors.outputs]
        self._check_embedding(out_names)
        if self.guidance is not None:
            want = 1 + len(self.guidance.channels)
            if self.task != "segmentation" or self.tensors.inputs[0].dims[0] != want:
                raise ValueError(f"[guidance] needs task = 'segmentation' and tensors.inputs[0].dims[0] = {want} "
                                 "(the image channel, then one channel per guidance channel)")
        if self.postprocessing.output is not None and self.postprocessing.output not in out_names:
            raise ValueError(f"postprocessing.output {self.postprocessing.output!r} is not one of {out_names}")
        if self.task == "segmentation" and not self.labels:
            raise ValueError("a segmentation model needs at least one [[labels]] entry")
        channels = [lab.channel for lab in self.labels]
        if len(set(channels)) != len(channels):
            raise ValueError("labels: two labels use the same channel")
        ndims = len(self.tensors.inputs[0].dims)
        for key in ("max_dims", "opt_dims"):
            dims = getattr(self.tensors, key)
            if dims is not None and len(dims) != ndims:
                raise ValueError(f"tensors.{key} must have {ndims} dims like tensors.inputs[0].dims")
        return self

    def _check_embedding(self, out_names: list[str]) -> None:
        emb = self.embedding
        if self.task != "embedding" and (emb.fields or emb.text is not None):
            raise ValueError("[embedding] applies to task = 'embedding' only")
        missing = sorted(t for t in emb.fields.values() if t not in out_names)
        if missing:
            raise ValueError(f"embedding.fields name outputs {missing} that are not in tensors.outputs {out_names}")
        if emb.text is not None and emb.text.field in self.image_fields:
            raise ValueError(f"embedding.text.field {emb.text.field!r} is also an image field")

    @property
    def image_fields(self) -> dict[str, str]:
        """Response field -> image output tensor of an embedding answer (``{"embedding": output}`` by default)."""
        return dict(self.embedding.fields) or {"embedding": self.output_name}

    def text_spec(self) -> ModelSpec | None:
        """The text tower as a model of its own (one input, one output), for a backend to open; None without one.

        Named ``<name>.text`` (a Triton server serves it under that name), hidden, in the same folder.
        """
        text = self.embedding.text
        if text is None:
            return None
        return ModelSpec(
            name=f"{self.name[:58]}.text", version=self.version, task="embedding", hidden=True, onnx=text.onnx,
            backends=list(self.backends), precision=self.precision, triton=self.triton,
            tensors=Tensors(max_batch=text.max_batch,
                            inputs=[TensorSpec(name=text.input, dtype="int64", dims=[text.max_tokens])],
                            outputs=[TensorSpec(name=text.output, dims=[-1])]),
            preprocessing=Preprocessing(rescale=False), postprocessing=Postprocessing(decision="none"),
        )

    def contract_table(self) -> dict[str, Any]:
        """The ``[input]`` table as a dict, ``name`` defaulting to the model's name.

        ``dicom_node.validation.contract.Contract.from_dict`` takes this as is.
        """
        table = self.input.model_dump(mode="json")
        table["name"] = table["name"] or self.name
        return table

    @property
    def result_series_number(self) -> int:
        """Series Number of this model's SEG series (its SR takes the next one).

        ``series_number`` when the spec sets it, else a number derived from the
        model's name alone: the same on every node and every run (no random
        numbers), distinct between models unless their names hash to the same
        one of :data:`DERIVED_SERIES_SLOTS` slots (set ``series_number`` then).
        """
        if self.series_number is not None:
            return self.series_number
        return derived_series_number(self.name)

    @property
    def output_name(self) -> str:
        """Name of the output tensor that post-processing reads."""
        return self.postprocessing.output or self.tensors.outputs[0].name

    def resolve_parameters(self, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """Merge caller overrides onto the declared defaults.

        Parameters
        ----------
        overrides : dict, optional
            Values by parameter name, e.g. ``{"threshold": 0.4}``.

        Returns
        -------
        dict
            Every declared parameter with its effective, type-checked value.

        Raises
        ------
        ParameterError
            An unknown name, a wrong type or a value outside the bounds.
        """
        values = {name: p.default for name, p in self.parameters.items()}
        for name, value in (overrides or {}).items():
            if name not in self.parameters:
                known = ", ".join(sorted(self.parameters)) or "none"
                raise ParameterError(f"model {self.name!r} has no parameter {name!r} (known: {known})")
            try:
                values[name] = coerce_parameter(name, self.parameters[name], value)
            except ValueError as exc:
                raise ParameterError(f"model {self.name!r}: {exc}") from exc
        return values


def derived_series_number(name: str) -> int:
    """The SEG Series Number a model named ``name`` gets when its spec sets none.

    An even number in ``DERIVED_SERIES_FIRST`` .. ``DERIVED_SERIES_FIRST + 2 *
    (DERIVED_SERIES_SLOTS - 1)`` from the SHA-256 of the name (Python's ``hash``
    is salted per process, so it would differ between runs).
    """
    slot = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big") % DERIVED_SERIES_SLOTS
    return DERIVED_SERIES_FIRST + 2 * slot


def coerce_parameter(name: str, param: Parameter, value: Any) -> Any:
    """Check ``value`` against the parameter's type and bounds and return it coerced.

    Raises
    ------
    ValueError
        With a message naming the parameter.
    """
    if param.type == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"parameter {name!r} must be a bool, got {value!r}")
        return value
    items = value if param.type == "int_list" else [value]
    if param.type == "int_list" and not isinstance(value, list):
        raise ValueError(f"parameter {name!r} must be a list of integers, got {value!r}")
    want_int = param.type in ("int", "int_list")
    out = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int | float) or (want_int and not float(item).is_integer()):
            raise ValueError(f"parameter {name!r} must be {'an integer' if want_int else 'a number'}, got {item!r}")
        if (param.min is not None and item < param.min) or (param.max is not None and item > param.max):
            raise ValueError(f"parameter {name!r} = {item!r} is outside [{param.min}, {param.max}]")
        out.append(int(item) if want_int else float(item))
    return out if param.type == "int_list" else out[0]


def _format_error(path: Path, exc: ValidationError) -> str:
    first = exc.errors()[0]
    # Discriminated unions add the tag ("window") to the location; keep it, it helps.
    key = ".".join(str(p) for p in first["loc"]) or "(root)"
    msg = first["msg"].removeprefix("Value error, ")
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{path}: {key}: {msg}{more}"


def load_spec(path: Path) -> ModelSpec:
    """Read and validate one ``model.toml``.

    Parameters
    ----------
    path : pathlib.Path
        The spec file.

    Returns
    -------
    ModelSpec
        The validated, immutable spec.

    Raises
    ------
    SpecError
        The file is missing, not TOML, or invalid; the message names the file and key.
    """
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SpecError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: not valid TOML: {exc}") from exc
    try:
        return ModelSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(_format_error(path, exc)) from exc
