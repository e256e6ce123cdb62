"""Command-line entry point ``dicom-node``.

Each subcommand lives in its own module under :mod:`dicom_node.commands` and
exposes ``register(subparsers)``, which adds its parser and sets
``func(args, config) -> int``. Modules are imported only to build the parser;
heavy dependencies (codecs, ONNX Runtime) are imported inside ``func``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import TextIO

from dicom_node.config import NodeConfig, load_config
from dicom_node.errors import ConfigError, DicomNodeError, InferenceError

#: Subcommand modules, in the order ``--help`` lists them.
COMMAND_MODULES = ["serve", "status", "check", "models", "infer", "jobs", "results", "sources", "fetch", "synthetic"]


def echo(*values: object, file: TextIO | None = None, sep: str = " ", end: str = "\n") -> None:
    """Write command output (stdout by default): the one place the CLI talks to the terminal."""
    stream = file if file is not None else sys.stdout
    stream.write(sep.join(str(v) for v in values) + end)
    stream.flush()


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser with every available subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="dicom-node",
        description="DICOM node: receive studies, run models, send results back to PACS.",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="TOML config file (default: conf/node.toml in the working directory when present, else built-in defaults)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"dicom_node.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"dicom_node.commands.{name}":
                continue  # command not part of this build
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, load the configuration and run the subcommand.

    Returns
    -------
    int
        Process exit code: 0 success, 1 command-specific failure, 2 usage or
        configuration error.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config: NodeConfig = load_config(args.config)
    except ConfigError as exc:
        echo(f"dicom-node: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        return int(args.func(args, config))
    except ConfigError as exc:
        echo(f"dicom-node: configuration error: {exc}", file=sys.stderr)
        return 2
    except (DicomNodeError, InferenceError) as exc:
        echo(f"dicom-node: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
