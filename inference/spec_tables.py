"""The optional tables of a model spec: ``[embedding]`` (with ``[embedding.text]``) and ``[guidance]``.

Split from :mod:`inference.spec` to keep it small; :mod:`inference.spec` re-exports them, and
every table here is strict as the rest of the spec.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["FIELD_PATTERN", "FILE_PATTERN", "GUIDANCE_ACTIONS", "GUIDANCE_CHANNELS", "EmbeddingSpec", "Guidance",
           "GuidanceAction", "GuidanceChannel", "Strict", "TextSpec"]


class Strict(BaseModel):
    """Base of every spec table: unknown keys are errors (a typo must not silently change behaviour)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


#: A response field of an embedding answer (``embedding``, ``contrastive_img_emb``): a JSON key callers read.
FIELD_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
#: A file of the model folder named by the spec: a plain name, never a path, so a spec (admin
#: routes upload them) cannot point outside its own folder.
FILE_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"


class TextSpec(Strict):
    """The text tower of an image-text embedding model (``[embedding.text]``).

    CXR Foundation's ELIXR answers a ``prompt_query`` with ``contrastive_txt_emb``,
    a vector in the same space as the image's ``contrastive_img_emb``
    (https://developers.google.com/health-ai-developer-foundations/cxr-foundation/serving-api).
    Here the tower is a second ONNX graph in the model folder: input ``input``,
    int64 token ids ``(batch, max_tokens)`` padded with ``pad_id``; output
    ``output``, one vector per text, answered as ``field``. Texts are tokenized
    with the folder's ``tokenizer`` (a Hugging Face ``tokenizers`` JSON file).
    """

    onnx: str = Field("text.onnx", pattern=FILE_PATTERN)
    tokenizer: str = Field("tokenizer.json", pattern=FILE_PATTERN)
    input: str = Field("input_ids", min_length=1, max_length=128)
    output: str = Field(min_length=1, max_length=128)
    field: str = Field("contrastive_txt_emb", pattern=FIELD_PATTERN)
    #: Token ids per text (the graph's fixed second dimension); a longer text is refused, naming this.
    max_tokens: int = Field(64, ge=1, le=4096)
    #: Characters read from a prompt before tokenizing (bounds the tokenizer's work on a huge string).
    max_chars: int = Field(1024, ge=1, le=65536)
    pad_id: int = Field(0, ge=0)
    #: Texts one backend request carries (the text tower's micro-batch cap).
    max_batch: int = Field(64, ge=1, le=1024)


class EmbeddingSpec(Strict):
    """What an embedding model answers (``[embedding]``), per instance.

    ``fields`` maps a response field to an image output tensor; empty means
    ``{"embedding": <postprocessing output>}``, Derm Foundation's shape. CXR
    Foundation's shape names two image fields (``general_img_emb``,
    ``contrastive_img_emb``) and a ``[embedding.text]`` tower.
    """

    fields: dict[str, str] = Field(default_factory=dict)
    text: TextSpec | None = None

    @field_validator("fields")
    @classmethod
    def _field_names(cls, v: dict[str, str]) -> dict[str, str]:
        bad = [k for k in v if not re.fullmatch(FIELD_PATTERN, k)]
        if bad:
            raise ValueError(f"field names {bad} must match {FIELD_PATTERN}")
        return v


GuidanceChannel = Literal["foreground", "background"]
GuidanceAction = Literal["dextr3d", "deepgrow"]
GUIDANCE_CHANNELS: tuple[GuidanceChannel, ...] = ("foreground", "background")
GUIDANCE_ACTIONS: tuple[GuidanceAction, ...] = ("dextr3d", "deepgrow")


class Guidance(Strict):
    """Interactive annotation inputs (``[guidance]``): clicked points fed as extra input channels.

    The convention of DeepGrow and DExtr3D (Clara AIAA's ``/v1/deepgrow`` and ``/v1/dextr3d``,
    MONAI's ``AddGuidanceSignal``): each channel is a map of the volume's shape holding a Gaussian
    of ``sigma`` voxels (peak 1) at every point of its kind, stacked after the image channel, so
    ``tensors.inputs[0].dims[0]`` is ``1 + len(channels)``. DExtr3D's extreme points fill
    ``foreground``; DeepGrow's foreground and background clicks fill their own channels.
    """

    channels: list[GuidanceChannel] = Field(default_factory=lambda: list(GUIDANCE_CHANNELS), min_length=1, max_length=2)
    sigma: float = Field(3.0, gt=0.0, le=64.0)
    #: Which AIAA actions may run this model (``dextr3d``, ``deepgrow``).
    actions: list[GuidanceAction] = Field(default_factory=lambda: list(GUIDANCE_ACTIONS), min_length=1)

    @field_validator("channels")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("guidance channels must be distinct")
        return v
