"""The Clara AIAA model config (``config_aiaa.json``) as this node's model spec, and back.

AIAA describes a model by a JSON config (Clara Train 3.1, "Model Config",
https://docs.nvidia.com/clara/clara-train-archive/3.1/aiaa/model_config.html):
``version``, ``type`` (segmentation, annotation, classification, deepgrow, others,
pipeline), ``labels``, ``description``, ``pre_transforms`` and ``post_transforms``
(``{"name", "args"}`` each), ``inference`` (``image``, ``name``, ``args`` with
``scanning_window``/``roi``/``batch_size``, ``node_mapping``, ``trtis`` tensors) and
``writer``. :func:`to_spec` maps what has a counterpart in :class:`inference.spec.ModelSpec`
and refuses the rest with :class:`AiaaConfigError` naming the field (``pre_transforms[1].name``):
a transform silently dropped would change the model's answers.

What maps:

- loading and layout transforms (``LoadNifti``, ``ConvertToChannelsFirst``, ``AddChanneld``, ...)
  are the node's own decoding: accepted, nothing to record;
- ``ScaleIntensityRange(d)`` with ``b_min = 0``, ``b_max = 1``, ``clip`` -> ``intensity = window``;
  ``NormalizeIntensity(d)`` with ``subtrahend`` and ``divisor`` -> ``intensity = normalize``;
- ``inference.args.roi`` (AIAA's ``[x, y, z]``) -> ``preprocessing.sliding_window.roi``
  (``[slices, rows, cols]``, reversed); a 2-value ROI or a 3-dim input tensor -> ``mode = "2d"``;
- ``type`` ``annotation`` (DExtr3D) and ``deepgrow`` -> a ``[guidance]`` table (extreme points or
  foreground/background clicks as point-map channels after the image; ``sigma`` from
  ``AddGuidanceSignal``), the click-to-map transforms being the node's own;
- ``inference.trtis.input``/``output`` (Triton names, ``TYPE_FP32``, dims) -> ``[tensors]``,
  else ``node_mapping`` names with dims from the ROI;
- ``Activations(d)`` -> ``activation``; ``ArgmaxAcrossChannels``/``AsDiscreted(argmax)`` ->
  ``decision = "argmax"`` (label *i* is class *i + 1*, 0 the background);
  ``ThresholdValues``/``AsDiscreted(threshold)`` -> ``decision = "threshold"``;
- geometry bookkeeping after the model (``CopyProperties``, ``RestoreOriginalShape``,
  ``Restored``, ``FetchExtremePoints``, ...) and the ``writer``: the node restores geometry and
  writes its own results.

Labels are plain names in AIAA; a DICOM SEG segment needs coded concepts, so each becomes
SNOMED CT "Anatomical Structure" (123037004) / "Anatomical structure" (91723000) with the
name as its label. The uploaded config is kept next to the spec (:data:`CONFIG_FILE`) so
``GET /admin/model/{model}`` answers what was sent.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from dicom_node.errors import DicomNodeError
from inference.spec import ModelSpec

log = logging.getLogger(__name__)

#: The AIAA config kept in the model folder next to ``model.toml``.
CONFIG_FILE = "config_aiaa.json"
#: AIAA model types (Model Config, "Basic Information"); DExtr3D models are "annotation".
AIAA_TYPES = ("segmentation", "annotation", "classification", "deepgrow", "others", "pipeline")
#: Most bytes of an uploaded config (it is JSON text; models go in ``data``).
MAX_CONFIG_BYTES = 1024 * 1024

_LOADERS = {"loadnifti", "loadimage", "loadimaged", "loadpng", "loadniftid", "converttochannelsfirst", "addchannel", "addchanneld", "ensurechannelfirst", "ensurechannelfirstd",
            "aschannelfirst", "aschannelfirstd", "tonumpy", "tonumpyd", "totensor", "totensord", "ensuretyped",
            "casttotype", "casttotyped"}
_BOOKKEEPING = {"copyproperties", "restoreoriginalshape", "restored", "fetchextremepoints", "extremepointsd",
                "boundingboxd", "squeezedim", "squeezedimd", "tonumpy", "tonumpyd", "splitacrosschannels",
                "splitbasedonlabel"}
#: Click-to-map transforms of DeepGrow/DExtr3D configs: the node's ``[guidance]`` table makes the same maps.
_GUIDANCE = {"addguidancesignal", "addguidancesignald", "addguidancefrompoints", "addguidancefrompointsd",
             "addextremepointschannel", "addextremepointschanneld"}
#: AIAA's interactive types -> the ``[guidance]`` table (channels after the image, the action that runs it).
_INTERACTIVE = {"annotation": {"channels": ["foreground"], "actions": ["dextr3d"]},
                "deepgrow": {"channels": ["foreground", "background"], "actions": ["deepgrow"]}}
_DTYPES = {"TYPE_FP32": "float32", "TYPE_FP16": "float16", "TYPE_INT64": "int64", "TYPE_INT32": "int32",
           "TYPE_UINT8": "uint8", "TYPE_BOOL": "bool"}
_TRITON = {v: k for k, v in _DTYPES.items()}
_CATEGORY = {"value": "123037004", "scheme": "SCT", "meaning": "Anatomical Structure"}
_TYPE = {"value": "91723000", "scheme": "SCT", "meaning": "Anatomical structure"}
_PALETTE = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255),
            (255, 128, 0), (128, 0, 255)]
_TASKS = {"segmentation": "segmentation", "classification": "classification"}


class AiaaConfigError(DicomNodeError):
    """An AIAA model config that cannot become this node's model spec; ``field`` names where."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def parse(raw: bytes) -> dict[str, Any]:
    """The config object of an upload or a PATCH body.

    Raises
    ------
    AiaaConfigError
        Not UTF-8 JSON, over :data:`MAX_CONFIG_BYTES`, or not a JSON object.
    """
    if len(raw) > MAX_CONFIG_BYTES:
        raise AiaaConfigError("config", f"over {MAX_CONFIG_BYTES} bytes")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AiaaConfigError("config", f"not UTF-8 JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise AiaaConfigError("config", "must be a JSON object")
    return data


def _name(item: Any, where: str) -> tuple[str, dict[str, Any]]:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise AiaaConfigError(where, 'each transform is {"name": ..., "args": {...}}')
    args = item.get("args") or {}
    if not isinstance(args, dict):
        raise AiaaConfigError(f"{where}.args", "must be an object")
    return item["name"].rsplit(".", 1)[-1], args


def _number(args: dict[str, Any], key: str, where: str, default: float | None = None) -> float:
    value = args.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AiaaConfigError(f"{where}.args.{key}", "must be a number")
    return float(value)


def _intensity(name: str, args: dict[str, Any], where: str) -> dict[str, Any]:
    key = name.lower()
    if key in ("scaleintensityrange", "scaleintensityranged"):
        lo, hi = _number(args, "a_min", where), _number(args, "a_max", where)
        b_lo, b_hi = _number(args, "b_min", where, 0.0), _number(args, "b_max", where, 1.0)
        if (b_lo, b_hi) != (0.0, 1.0) or not args.get("clip", False) or hi <= lo:
            raise AiaaConfigError(f"{where}.args", "only a_min < a_max onto b_min = 0, b_max = 1 with clip = true "
                                  "maps onto this node's window")
        return {"kind": "window", "center": (lo + hi) / 2, "width": hi - lo}
    if key in ("normalizeintensity", "normalizeintensityd"):
        if "subtrahend" not in args or "divisor" not in args:
            raise AiaaConfigError(f"{where}.args", "per-image statistics have no counterpart; give subtrahend "
                                  "and divisor")
        std = _number(args, "divisor", where)
        if std <= 0:
            raise AiaaConfigError(f"{where}.args.divisor", "must be > 0")
        table: dict[str, Any] = {"kind": "normalize", "mean": _number(args, "subtrahend", where), "std": std}
        if args.get("clip") is not None:  # the node's own spelling of a clip before normalising (from_spec writes it)
            clip = args["clip"]
            if (not isinstance(clip, list) or len(clip) != 2 or not all(isinstance(v, int | float) for v in clip)
                    or clip[0] >= clip[1]):
                raise AiaaConfigError(f"{where}.args.clip", "[low, high] with low < high")
            table["clip"] = [float(clip[0]), float(clip[1])]
        return table
    raise AiaaConfigError(f"{where}.name", f"{name} has no counterpart in this node's model spec "
                          "(accepted: loaders, ScaleIntensityRange, NormalizeIntensity)")


def _pre(config: dict[str, Any]) -> dict[str, Any]:
    """The ``intensity`` table of ``pre_transforms`` (``none`` when there is no intensity transform)."""
    items = config.get("pre_transforms") or []
    if not isinstance(items, list):
        raise AiaaConfigError("pre_transforms", "must be a list")
    intensity: dict[str, Any] = {"kind": "none"}
    for i, item in enumerate(items):
        where = f"pre_transforms[{i}]"
        name, args = _name(item, where)
        if name.lower() in _LOADERS or name.lower() in _GUIDANCE:
            continue
        if intensity["kind"] != "none":
            raise AiaaConfigError(f"{where}.name", f"a second intensity transform ({name}) has no counterpart")
        intensity = _intensity(name, args, where)
    return intensity


def _post(config: dict[str, Any]) -> dict[str, Any]:
    items = config.get("post_transforms") or []
    if not isinstance(items, list):
        raise AiaaConfigError("post_transforms", "must be a list")
    post: dict[str, Any] = {"activation": "none", "decision": "threshold", "threshold": 0.5}
    for i, item in enumerate(items):
        where = f"post_transforms[{i}]"
        name, args = _name(item, where)
        key = name.lower()
        if key in _BOOKKEEPING:
            continue
        if key in ("activations", "activationsd"):
            post["activation"] = "softmax" if args.get("softmax") else "sigmoid" if args.get("sigmoid") else "none"
        elif key in ("argmaxacrosschannels", "argmax") or (key in ("asdiscrete", "asdiscreted") and args.get("argmax")):
            post["decision"] = "argmax"
        elif key in ("thresholdvalues", "asdiscrete", "asdiscreted"):
            value = _number(args, "threshold" if "threshold" in args else "logit_thresh", where, 0.5)
            if not 0.0 <= value <= 1.0:
                raise AiaaConfigError(f"{where}.args", "a threshold must lie in 0..1")
            post.update(decision="threshold", threshold=value)
        else:
            raise AiaaConfigError(f"{where}.name", f"{name} has no counterpart in this node's model spec "
                                  "(accepted: Activations, ArgmaxAcrossChannels, ThresholdValues, AsDiscreted)")
    return post


def _dims(value: Any, where: str) -> list[int]:
    if not isinstance(value, list) or not value or not all(isinstance(d, int) and not isinstance(d, bool)
                                                           for d in value):
        raise AiaaConfigError(where, "must be a list of integers")
    return [int(d) for d in value]


def _tensor(item: Any, where: str) -> dict[str, Any]:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise AiaaConfigError(where, 'must be {"name", "data_type", "dims"}')
    dtype = _DTYPES.get(str(item.get("data_type", "TYPE_FP32")))
    if dtype is None:
        raise AiaaConfigError(f"{where}.data_type", f"one of {', '.join(_DTYPES)}")
    return {"name": item["name"], "dtype": dtype, "dims": _dims(item.get("dims"), f"{where}.dims")}


def _tensors(inference: dict[str, Any], roi: list[int], channels: int, in_channels: int) -> tuple[dict[str, Any], int]:
    """The ``[tensors]`` table and the spatial rank of the input (2 or 3)."""
    args = inference.get("args") or {}
    batch = args.get("batch_size", 1) if isinstance(args, dict) else 1
    trtis = inference.get("trtis")
    if isinstance(trtis, dict) and trtis.get("input"):
        inputs, outputs = trtis.get("input"), trtis.get("output")
        if not isinstance(inputs, list) or len(inputs) != 1:
            raise AiaaConfigError("inference.trtis.input", "this node feeds exactly one input tensor")
        if not isinstance(outputs, list) or not outputs:
            raise AiaaConfigError("inference.trtis.output", "name at least one output tensor")
        ins = [_tensor(inputs[0], "inference.trtis.input[0]")]
        outs = [_tensor(o, f"inference.trtis.output[{i}]") for i, o in enumerate(outputs)]
        batch = trtis.get("max_batch_size", batch) or 1
        rank = len(ins[0]["dims"]) - 1
    else:
        mapping = inference.get("node_mapping") or {"NV_MODEL_INPUT": "image", "NV_MODEL_OUTPUT": "model"}
        if not isinstance(mapping, dict) or not mapping:
            raise AiaaConfigError("inference.node_mapping", "must map tensor names to fields")
        image = inference.get("image", "image")
        in_names = [k for k, v in mapping.items() if v == image]
        out_names = [k for k, v in mapping.items() if v != image]
        if len(in_names) != 1 or not out_names:
            raise AiaaConfigError("inference.node_mapping", f"needs one tensor for {image!r} and at least one output")
        rank = len(roi) if roi else 2
        spatial = list(reversed(roi)) if rank == 3 else [-1, -1]
        ins = [{"name": in_names[0], "dtype": "float32", "dims": [in_channels, *spatial]}]
        outs = [{"name": n, "dtype": "float32", "dims": [channels, *spatial]} for n in out_names]
    if rank not in (2, 3):
        raise AiaaConfigError("inference", f"a {rank}-D input has no counterpart (2-D slices or 3-D volumes)")
    if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= 1024:
        raise AiaaConfigError("inference.args.batch_size", "must be an integer in 1..1024")
    return {"max_batch": batch, "inputs": ins, "outputs": outs}, rank


def _labels(config: dict[str, Any], argmax: bool) -> list[dict[str, Any]]:
    labels = config.get("labels", [])
    if not isinstance(labels, list) or not all(isinstance(x, str) and 0 < len(x) <= 64 for x in labels):
        raise AiaaConfigError("labels", "must be a list of names (1 to 64 characters each)")
    if len(set(labels)) != len(labels):
        raise AiaaConfigError("labels", "names must be distinct")
    first = 1 if argmax else 0  # argmax: class 0 is the background
    return [{"channel": first + i, "name": name, "category": dict(_CATEGORY), "type": dict(_TYPE),
             "color": list(_PALETTE[i % len(_PALETTE)])} for i, name in enumerate(labels)]


def to_spec(name: str, config: dict[str, Any], onnx: str = "model.onnx") -> dict[str, Any]:
    """The model spec (as ``model.toml`` data) of an AIAA config; validate it with ``ModelSpec``.

    Raises
    ------
    AiaaConfigError
        A field with no counterpart here, named (``type``, ``pre_transforms[1].name``, ...).
    """
    kind = config.get("type")
    if kind not in AIAA_TYPES:
        raise AiaaConfigError("type", f"one of {', '.join(AIAA_TYPES)}")
    if kind not in _TASKS and kind not in _INTERACTIVE:
        raise AiaaConfigError("type", f"{kind!r} models have no counterpart in this node's model spec "
                              f"(accepted: {', '.join([*_TASKS, *_INTERACTIVE])})")
    version = config.get("version", "3")
    if not isinstance(version, str | int) or isinstance(version, bool):
        raise AiaaConfigError("version", "must be a string or a number")
    description = config.get("description", "")
    if not isinstance(description, str):
        raise AiaaConfigError("description", "must be a string")
    inference = config.get("inference") or {}
    if not isinstance(inference, dict):
        raise AiaaConfigError("inference", "must be an object")
    args = inference.get("args") or {}
    roi = _dims(args["roi"], "inference.args.roi") if isinstance(args, dict) and "roi" in args else []
    if roi and (len(roi) not in (2, 3) or min(roi) < 1):
        raise AiaaConfigError("inference.args.roi", "2 or 3 positive sizes ([x, y] or [x, y, z])")
    post = _post(config)
    labels = _labels(config, post["decision"] == "argmax")
    channels = len(labels) + 1 if post["decision"] == "argmax" else max(1, len(labels))
    guidance = _INTERACTIVE.get(str(kind))
    tensors, rank = _tensors(inference, roi, channels, 1 + len(guidance["channels"]) if guidance else 1)
    pre: dict[str, Any] = {"rescale": True, "intensity": _pre(config), "mode": "3d" if rank == 3 else "2d"}
    if rank == 3:
        tile = list(reversed(roi)) if len(roi) == 3 else [d if d > 0 else 96 for d in tensors["inputs"][0]["dims"][1:]]
        pre["sliding_window"] = {"roi": tile}
    spec: dict[str, Any] = {
        "name": name, "version": str(version)[:32], "task": _TASKS.get(str(kind), "segmentation"),
        "description": description,
        "onnx": onnx, "preprocessing": pre, "tensors": tensors, "postprocessing": post, "labels": labels,
        "parameters": {"threshold": {"type": "float", "default": post["threshold"], "min": 0.0, "max": 1.0,
                                     "description": "Probability above which a voxel belongs to a label."}},
    }
    if rank == 3:
        spec["input"] = {"geometry": {"volume": True}}
    if guidance:
        spec["guidance"] = {**guidance, "sigma": _sigma(config)}
    return spec


def _sigma(config: dict[str, Any]) -> float:
    """The Gaussian width of the click maps: the config's ``AddGuidanceSignal`` ``sigma``, else 3 voxels."""
    for i, item in enumerate(config.get("pre_transforms") or []):
        name, args = _name(item, f"pre_transforms[{i}]")
        if name.lower() in _GUIDANCE and "sigma" in args:
            return _number(args, "sigma", f"pre_transforms[{i}]")
    return 3.0


def stored(directory: Path) -> dict[str, Any] | None:
    """The AIAA config a model folder was loaded with (:data:`CONFIG_FILE`); None for a ``model.toml`` model."""
    try:
        return parse((directory / CONFIG_FILE).read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, AiaaConfigError) as exc:
        log.warning("stored AIAA config unreadable folder=%s error=%s", directory.name, exc)
        return None


def guidance_actions(spec: ModelSpec) -> list[str]:
    """The interactive actions (``dextr3d``, ``deepgrow``) a model's ``[guidance]`` table declares; none for others."""
    guidance = getattr(spec, "guidance", None)
    return [str(a) for a in getattr(guidance, "actions", None) or []]


def aiaa_type(spec: ModelSpec, stored: dict[str, Any] | None = None) -> str:
    """The AIAA ``type`` of a model: the uploaded config's, else from its guidance actions (DExtr3D models are
    ``annotation``, AIAA's compatibility spelling) or its task (embedding is AIAA's ``others``)."""
    if stored and stored.get("type") in AIAA_TYPES:
        return str(stored["type"])
    actions = guidance_actions(spec)
    if actions:
        return "annotation" if "dextr3d" in actions else "deepgrow"
    return spec.task if spec.task in _TASKS else "others"


def type_matches(wanted: str, spec: ModelSpec, stored: dict[str, Any] | None = None) -> bool:
    """Whether ``GET /v1/models?type=wanted`` lists the model (a model with both guidance actions answers both)."""
    actions = guidance_actions(spec)
    if wanted in ("annotation", "dextr3d") and "dextr3d" in actions:
        return True
    if wanted == "deepgrow" and "deepgrow" in actions:
        return True
    if wanted == "embedding":
        return spec.task == "embedding"
    return aiaa_type(spec, stored) == ("annotation" if wanted == "dextr3d" else wanted)


def list_entry(spec: ModelSpec, stored: dict[str, Any] | None = None) -> dict[str, Any]:
    """One model as AIAA's ``GET /v1/models`` lists it: ``name``, ``labels``, ``description``, ``version``, ``type``.

    A deepgrow model also says ``deepgrow``: ``"2D"`` or ``"3D"`` (3D Slicer's plugin reads it to send clicks of one
    slice or of the volume).
    """
    entry = {"name": spec.name, "labels": [lab.name for lab in spec.labels], "description": spec.description,
             "version": spec.version, "type": aiaa_type(spec, stored)}
    if "deepgrow" in guidance_actions(spec):
        entry["deepgrow"] = "3D" if spec.preprocessing.mode == "3d" else "2D"
    return entry


def from_spec(spec: ModelSpec) -> dict[str, Any]:
    """An AIAA config describing a model of this node that was not uploaded as one (``GET /admin/model``)."""
    pre = spec.preprocessing
    pre_transforms: list[dict[str, Any]] = [{"name": "LoadNifti", "args": {"fields": "image"}}]
    intensity = pre.intensity
    if intensity.kind == "window":
        half = intensity.width / 2
        pre_transforms.append({"name": "ScaleIntensityRange", "args": {
            "field": "image", "a_min": intensity.center - half, "a_max": intensity.center + half,
            "b_min": 0.0, "b_max": 1.0, "clip": True}})
    elif intensity.kind == "normalize":
        norm: dict[str, Any] = {"field": "image", "subtrahend": intensity.mean, "divisor": intensity.std}
        if intensity.clip is not None:
            norm["clip"] = list(intensity.clip)
        pre_transforms.append({"name": "NormalizeIntensity", "args": norm})
    guidance = getattr(spec, "guidance", None)
    if guidance is not None:
        pre_transforms.append({"name": "AddGuidanceSignal", "args": {"field": "image", "sigma": guidance.sigma}})
    args: dict[str, Any] = {"batch_size": spec.tensors.max_batch, "scanning_window": pre.sliding_window is not None}
    if pre.sliding_window is not None:
        args["roi"] = list(reversed(pre.sliding_window.roi))
    post = spec.postprocessing
    post_transforms: list[dict[str, Any]] = []
    if post.activation != "none":
        post_transforms.append({"name": "Activations", "args": {post.activation: True}})
    if post.decision == "argmax":
        post_transforms.append({"name": "ArgmaxAcrossChannels", "args": {}})
    elif post.decision == "threshold":
        post_transforms.append({"name": "ThresholdValues", "args": {"threshold": post.threshold}})
    return {
        "version": spec.version, "type": aiaa_type(spec), "labels": [lab.name for lab in spec.labels],
        "description": spec.description, "pre_transforms": pre_transforms,
        "inference": {"image": "image", "name": "dicom-node", "args": args, "trtis": {
            "max_batch_size": spec.tensors.max_batch,
            "input": [{"name": t.name, "data_type": _TRITON[t.dtype], "dims": t.dims} for t in spec.tensors.inputs],
            "output": [{"name": t.name, "data_type": _TRITON[t.dtype], "dims": t.dims}
                       for t in spec.tensors.outputs]}},
        "post_transforms": post_transforms,
    }
