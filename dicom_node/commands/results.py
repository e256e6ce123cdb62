"""``dicom-node results list|show``: the SEG and SR objects the node wrote, without dcmdump.

``list`` prints one line per result object: kind (SEG or SR), model and
version, creation time, Study Instance UID, the source series the model ran
on, the result's own series and SOP Instance UIDs, and the file. ``--study``
keeps one study; ``--json`` prints one JSON object per line. ``show`` prints
one object as JSON. Both only read: a storage root that does not exist is
reported (exit 1), not created. The queries live in :mod:`dicom_node.index.results`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from dicom_node.commands import existing_index
from dicom_node.commands.output import echo
from dicom_node.config import NodeConfig
from dicom_node.index.results import ResultRecord, get_result, list_results

_HEADER: tuple[str, ...] = ("kind", "model", "version", "created", "study", "source series", "result series", "sop instance", "file")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``results list`` and ``results show SOP_UID``."""
    p = sub.add_parser("results", help="result objects (SEG, SR) the node wrote: list them or show one")
    actions = p.add_subparsers(dest="results_command", metavar="ACTION")
    actions.required = True
    ls = actions.add_parser("list", help="one line per result object: kind, model, UIDs, file")
    ls.add_argument("--study", metavar="UID", help="only results of this Study Instance UID")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    ls.set_defaults(func=run_list)
    show = actions.add_parser("show", help="one result object as JSON")
    show.add_argument("sop_instance_uid", metavar="SOP_UID", help="SOP Instance UID of the SEG or SR")
    show.set_defaults(func=run_show)


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _as_json(record: ResultRecord, root: Path) -> dict[str, object]:
    """The record with an absolute ``path`` and a readable ``created`` time next to ``created_at``."""
    out: dict[str, object] = dataclasses.asdict(record)
    out["path"] = str(root / record.path)
    out["created"] = _when(record.created_at)
    return out


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    """Align columns to the widest cell (UIDs vary in length up to 64 characters)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]


def run_list(args: argparse.Namespace, config: NodeConfig) -> int:
    """Print every result object (or those of ``--study``), oldest first."""
    index = existing_index(config)
    root = config.storage.root.resolve()
    conn = index.reader()
    try:
        records = list_results(conn, args.study)
    finally:
        conn.close()
    if args.json:
        for record in records:
            echo(json.dumps(_as_json(record, root)))
        return 0
    if not records:
        echo("no result objects" + (f" for study {args.study}" if args.study else ""))
        return 0
    rows = [_HEADER] + [
        (r.kind, r.model, r.model_version, _when(r.created_at), r.study_instance_uid, r.source_series_uid,
         r.series_instance_uid, r.sop_instance_uid, str(root / r.path))
        for r in records
    ]
    for line in _table(rows):
        echo(line)
    return 0


def run_show(args: argparse.Namespace, config: NodeConfig) -> int:
    """Print one result object as JSON (with ``file_exists``); exit 1 when the UID is unknown."""
    index = existing_index(config)
    conn = index.reader()
    try:
        record = get_result(conn, args.sop_instance_uid)
    finally:
        conn.close()
    if record is None:
        echo(f"dicom-node results: no result object {args.sop_instance_uid!r}", file=sys.stderr)
        return 1
    out = _as_json(record, config.storage.root.resolve())
    out["file_exists"] = Path(str(out["path"])).is_file()
    echo(json.dumps(out, indent=2))
    return 0
