"""``dicom-node models``: list, show and build the models of the model store.

``list`` shows, for each model, the backend it would run on here and why each
other backend is unavailable (missing package, no GPU, no server); ``show``
prints one spec as JSON; ``build`` builds TensorRT engines ahead of time (with a
progress bar on stderr when it is a terminal).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from dicom_node import registry
from dicom_node.commands.output import echo
from dicom_node.config import NodeConfig
from dicom_node.progress import bar
from dicom_node.registry import ModelRegistry
from inference.backends import (
    BackendOptions,
    availability,
    candidate_order,
    select_backend,
)
from inference.errors import InferenceError
from inference.spec import BACKEND_NAMES
from inference.store import ModelStore


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``models`` subcommand and its ``list``/``show``/``build`` actions."""
    p = sub.add_parser("models", help="list, show or build the models in the model store")
    actions = p.add_subparsers(dest="models_action", metavar="ACTION")
    actions.required = True
    ls = actions.add_parser("list", help="models with the backend each runs on here")
    ls.add_argument("--all", action="store_true", help="include hidden (test) models")
    ls.add_argument("--json", action="store_true", help="print JSON instead of text")
    show = actions.add_parser("show", help="print one model's spec as JSON")
    show.add_argument("name")
    build = actions.add_parser("build", help="build the TensorRT engines of models ahead of time")
    build.add_argument("names", nargs="*", metavar="NAME", help="models to build (default: every listed model)")
    p.set_defaults(func=run)


def backend_options(config: NodeConfig) -> BackendOptions:
    """The backend settings of the node's ``[inference]`` section."""
    return registry.backend_options(config.inference)


def open_store(config: NodeConfig) -> ModelStore:
    """The model store under ``[inference] models_dir``, scanned once for this command."""
    return ModelRegistry(config.inference).store()


def run(args: argparse.Namespace, config: NodeConfig) -> int:
    """Dispatch to the chosen action; inference errors print one line and exit 1."""
    try:
        if args.models_action == "list":
            return _list(args, config)
        if args.models_action == "show":
            return _show(args, config)
        return _build(args, config)
    except InferenceError as exc:
        echo(f"dicom-node: {exc}", file=sys.stderr)
        return 1


def _list(args: argparse.Namespace, config: NodeConfig) -> int:
    store = open_store(config)
    options = backend_options(config)
    backends = {name: availability(name, options) for name in BACKEND_NAMES}
    rows: list[dict[str, Any]] = []
    for name in store.names(include_hidden=args.all):
        spec = store.get(name).spec
        selection = select_backend(spec, list(config.inference.backends), options)
        rows.append(
            {
                "name": name,
                "version": spec.version,
                "task": spec.task,
                "hidden": spec.hidden,
                "backend": selection.name,
                "order": candidate_order(spec, list(config.inference.backends)),
            }
        )
    rejected = {str(path): msg for path, msg in store.errors.items()}
    if args.json:
        status = {n: {"available": ok, "reason": why} for n, (ok, why) in backends.items()}
        echo(json.dumps({"models": rows, "backends": status, "rejected": rejected}, indent=2))
        return 0
    echo(f"models in {config.inference.models_dir}:")
    if not rows:
        echo("  (none)")
    for row in rows:
        echo(f"  {row['name']:<16} {row['version']:<8} {row['task']:<15} runs on: {row['backend'] or 'NONE'}")
        for other in row["order"]:
            ok, why = backends[other]
            if other != row["backend"]:
                echo(f"      {other:<12} {'available, lower preference' if ok else 'unavailable: ' + why}")
    echo("backends:")
    for name, (ok, why) in backends.items():
        echo(f"  {name:<12} {'available' if ok else 'unavailable'}: {why}")
    for msg in rejected.values():
        echo(f"rejected spec: {msg}")
    return 0


def _show(args: argparse.Namespace, config: NodeConfig) -> int:
    store = open_store(config)
    entry = store.get(args.name)
    selection = select_backend(entry.spec, list(config.inference.backends), backend_options(config))
    out = {
        "directory": str(entry.directory),
        "onnx_sha256": entry.onnx_sha256(),
        "backend": selection.name,
        "backend_detail": selection.detail,
        "backends_unavailable": selection.passed_over,
        "spec": entry.spec.model_dump(mode="json"),
    }
    echo(json.dumps(out, indent=2))
    return 0


def _build(args: argparse.Namespace, config: NodeConfig) -> int:
    """Build each named model's plan (all non-hidden models without names); one line per plan.

    A TensorRT build takes minutes per model, so a terminal shows a bar on
    stderr counting models; the first failure stops the run (exit 1).
    """
    from inference.backends import tensorrt

    store = open_store(config)
    names = list(args.names) or store.names(include_hidden=False)
    if not names:
        echo(f"dicom-node: no models in {config.inference.models_dir}", file=sys.stderr)
        return 1
    options = backend_options(config)
    with bar(len(names), desc="build TensorRT engines", unit="model") as shown:
        for name in names:
            shown.set_description_str(f"build TensorRT engine {name}")
            entry = store.get(name)
            plan = tensorrt.build(entry, options)
            echo(f"TensorRT engine for {entry.spec.name}: {plan}")
            shown.update(1)
    return 0
