"""``dicom-node check PATH...``: validate files or folders, one JSON line per series.

Without ``--contract`` only decodability and volume geometry are checked; with
it, the model input contract too. Exit code 0 when every series passes, 1
otherwise. ``--verbose`` adds the pixel decode path chosen (GPU or CPU, and why).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from dicom_node.commands.output import echo
from dicom_node.config import NodeConfig


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``check`` subcommand."""
    p = sub.add_parser("check", help="check DICOM files against a model input contract (one JSON line per series)")
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="DICOM files or folders (searched recursively)")
    p.add_argument("--contract", default=None, help="built-in contract name (cxr-foundation, ct-volume) or a TOML file")
    p.add_argument("--no-decode", action="store_true", help="check headers only; do not decode pixel data")
    p.add_argument("--verbose", action="store_true", help="report which decoder / GPU path was selected")
    p.set_defaults(func=run)


def _files(paths: list[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            for root, _dirs, names in os.walk(path):
                for name in sorted(names):
                    yield Path(root) / name
        else:
            yield path


def _group(paths: list[Path], max_inflated: int) -> tuple[dict[str, list[Path]], list[dict[str, object]]]:
    """Group files by Series Instance UID; collect unreadable files as failures."""
    from dicom_node.errors import PixelError
    from dicom_node.pixels.decode import read_dataset

    series: dict[str, list[Path]] = {}
    unreadable: list[dict[str, object]] = []
    for path in _files(paths):
        try:
            ds = read_dataset(path, max_inflated_bytes=max_inflated, stop_before_pixels=True)
        except PixelError as exc:
            unreadable.append({"file": path.name, "verdict": "fail", "issues": [{"rule": "readable", "message": str(exc).split(": ", 1)[-1]}]})
            continue
        if "SOPInstanceUID" not in ds and "SOPClassUID" not in ds:
            # A forced read of a non-DICOM file yields an empty dataset; report it as unreadable.
            unreadable.append({"file": path.name, "verdict": "fail", "issues": [{"rule": "readable", "message": "not a DICOM instance (no SOP Class/Instance UID)"}]})
            continue
        series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append(path)
    return series, unreadable


def run(args: argparse.Namespace, config: NodeConfig) -> int:
    """Check every series found under ``args.paths``; print one JSON line each."""
    from dicom_node.pixels.gpu import select_decoder
    from dicom_node.pixels.pool import default_workers
    from dicom_node.validation import load_contract, validate_series

    contract = load_contract(args.contract) if args.contract else None
    max_inflated = config.scp.max_inflated_bytes
    missing = [str(p) for p in args.paths if not p.exists()]
    if missing:
        echo(f"dicom-node check: no such file or folder: {', '.join(missing)}", file=sys.stderr)
        return 1
    series, unreadable = _group(list(args.paths), max_inflated)
    ok = not unreadable
    for line in unreadable:
        echo(json.dumps(line))
    for files in series.values():
        report = validate_series(files, contract, decode=not args.no_decode, max_inflated_bytes=max_inflated)
        out = report.to_json()
        if args.verbose:
            selection = select_decoder(report.transfer_syntaxes, mode=config.pixels.gpu_decode)
            out["decoder"] = {"path": selection.path, "reason": selection.reason, "workers": default_workers(config.pixels.decode_workers)}
        echo(json.dumps(out, default=str))
        ok = ok and report.passed
    if not series and not unreadable:
        echo("dicom-node check: no DICOM files found", file=sys.stderr)
        return 1
    return 0 if ok else 1
