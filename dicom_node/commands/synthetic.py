"""``dicom-node synthetic``: write a synthetic CT series as Part 10 files, for demos and first runs.

Each run writes a new series (fresh Study, Series and SOP Instance UIDs), so
sending it to a node always starts a job: a node keeps the first copy of an
instance it already holds (``storage.duplicate_policy = "keep_first"``), and a
re-sent series would change nothing. ``--seed`` reproduces a series exactly
(same UIDs, same pixels).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dicom_node.commands.output import echo
from dicom_node.config import NodeConfig


def _positive(text: str) -> int:
    """Parse a strictly positive integer for ``--slices``/``--rows``/``--columns``."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``synthetic`` subcommand."""
    p = sub.add_parser(
        "synthetic",
        help="write a synthetic CT series (new UIDs on every run unless --seed is given)",
        description="Write a synthetic CT series (CT Image Storage, Explicit VR Little Endian) as 0001.dcm, "
        "0002.dcm, ... into OUT_DIR. Every run makes a new series; --seed N reproduces one exactly.",
    )
    p.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="folder to write (created; earlier NNNN.dcm files replaced)")
    p.add_argument("--slices", type=_positive, default=64, help="number of slices (default 64)")
    p.add_argument("--rows", type=_positive, default=256, help="rows per slice (default 256)")
    p.add_argument("--columns", type=_positive, default=256, help="columns per slice (default 256)")
    p.add_argument("--seed", type=int, default=None, help="reproducible series: same seed, same UIDs and pixels")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, config: NodeConfig) -> int:
    """Write the series and print its folder, file count and Study/Series Instance UIDs.

    Returns
    -------
    int
        0 when written; 1 when the folder cannot be written (one line on stderr).
    """
    import pydicom

    from dicom_node.synthetic import SeriesSpec, write_ct_series

    spec = SeriesSpec(slices=args.slices, rows=args.rows, columns=args.columns, seed=args.seed)
    try:
        paths = write_ct_series(args.out_dir, spec)
    except OSError as exc:
        echo(f"dicom-node synthetic: cannot write {args.out_dir}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    first = pydicom.dcmread(paths[0], stop_before_pixels=True)
    summary = {
        "folder": str(args.out_dir.resolve()),
        "files": len(paths),
        "study_instance_uid": str(first.StudyInstanceUID),
        "series_instance_uid": str(first.SeriesInstanceUID),
    }
    if args.json:
        echo(json.dumps(summary))
        return 0
    echo(f"folder:             {summary['folder']}")
    echo(f"files:              {summary['files']}")
    echo(f"StudyInstanceUID:   {summary['study_instance_uid']}")
    echo(f"SeriesInstanceUID:  {summary['series_instance_uid']}")
    return 0
