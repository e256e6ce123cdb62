"""Command-line entry point ``dicom-node``.

Each subcommand lives in its own module under :mod:`dicom_node.commands` and
exposes ``register(subparsers)``, which adds its parser and sets
``func(args, config) -> int``. The modules are imported explicitly (a missing
one is an ImportError, not a silently absent command); heavy dependencies
(codecs, ONNX Runtime) are imported inside ``func``.

Global options (``--config``) are accepted before the subcommand and after it
(``dicom-node status --config conf/node.toml``), at any depth of nested
actions; when given in both places the later one wins. Every command first
writes one line on stderr naming the config file, storage root and model
folder it uses, so stdout stays clean for ``--json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from dicom_node.commands import check, fetch, infer, jobs, models, results, serve, sources, status, synthetic, viewer
from dicom_node.commands.output import echo
from dicom_node.config import DEFAULT_CONFIG_NAME, NodeConfig, find_config, load_config
from dicom_node.errors import ConfigError, DicomNodeError, InferenceError

__all__ = ["COMMAND_MODULES", "build_parser", "context_line", "echo", "main"]

#: Subcommand modules, in the order ``--help`` lists them.
COMMAND_MODULES = (serve, status, check, models, infer, jobs, results, sources, fetch, synthetic, viewer)


_CONFIG_HELP = (
    "TOML config file; relative paths in it are resolved against its folder "
    "(default: conf/node.toml in the working directory when present, else built-in defaults)"
)


def _add_global_options(parser: argparse.ArgumentParser, default: object) -> None:
    """Add the options every command accepts, with ``default`` as their default."""
    parser.add_argument("--config", type=Path, default=default, help=_CONFIG_HELP)


class _CommandParser(argparse.ArgumentParser):
    """Parser of a subcommand (and of its nested actions): also takes the global options.

    Their default is ``SUPPRESS``, so a subparser sets ``config`` only when the
    option is given after the subcommand; argparse copies a subparser's values
    over the top-level ones, hence the later position wins. Nested
    ``add_subparsers`` use ``type(self)``, so ``jobs list --config X`` works too.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _add_global_options(self, argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser with every available subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="dicom-node",
        description="DICOM node: receive studies, run models, send results back to PACS.",
    )
    _add_global_options(parser, None)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_CommandParser)
    sub.required = True
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def context_line(source: Path | None, config: NodeConfig) -> str:
    """The one stderr line saying which config, storage root and model folder a command uses.

    Why: a relative default (``./var``) silently meant a different node in each
    working directory; naming the absolute paths makes a wrong folder obvious.
    """
    where = str(source) if source is not None else f"built-in defaults (no {DEFAULT_CONFIG_NAME} in {Path.cwd()})"
    root = config.storage.root.resolve()
    missing = "" if root.is_dir() else " (does not exist yet)"
    return f"dicom-node: config {where}, storage {root}{missing}, models {config.inference.models_dir.resolve()}"


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
    source = find_config(args.config)
    try:
        config: NodeConfig = load_config(source)
    except ConfigError as exc:
        echo(f"dicom-node: configuration error: {exc}", file=sys.stderr)
        return 2
    echo(context_line(source, config), file=sys.stderr)
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
