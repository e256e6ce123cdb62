"""``dicom-node sources list|poll-now``: the state of the pollers, and one poll on demand.

``poll-now`` runs the poll cycle in this process against the same storage root
rather than asking the running service to do it. Why: it then works whether
or not ``dicom-node serve`` is running (a first test of a new source, a node
stopped for maintenance), it prints exactly what its own cycle brought in
without a request/answer protocol between processes, and a stopped source
(HTTP 401/403) can be tried again right after its credentials were fixed. What
makes it safe: every write goes through SQLite in WAL mode (two processes may
write; each commit is durable), instances go through the same durable ingest
path as the service's, and the lease in ``source_state`` lets only one process
poll a source at a time (``poll-now`` waits up to a minute for a running
service cycle to finish). Its outcome is persisted like a scheduled cycle's: a
success clears a stopped state, and the service resumes polling that source.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from typing import Any

from dicom_node.commands import existing_index, has_index
from dicom_node.commands.output import echo
from dicom_node.config import NodeConfig

_FIELDS = ("state", "reason", "watermark", "next_poll_at", "backoff_until", "failures", "polls", "retrieved",
           "last_retrieved", "seen", "last_poll_at", "last_success_at", "last_error", "last_error_at")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``sources list`` and ``sources poll-now NAME``."""
    p = sub.add_parser("sources", help="pollers of DICOMweb and DIMSE sources: state, and poll one now")
    actions = p.add_subparsers(dest="sources_command", metavar="ACTION")
    actions.required = True
    ls = actions.add_parser("list", help="each configured poller with its state, last poll, counts and last error")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    ls.set_defaults(func=run_list)
    now = actions.add_parser("poll-now", help="run one poll cycle of a source now and print what arrived")
    now.add_argument("name", help="the poller's name ([[sources.pollers]] name)")
    now.add_argument("--json", action="store_true", help="print the outcome as one JSON object")
    now.set_defaults(func=run_poll_now)


def _rows(config: NodeConfig) -> list[dict[str, Any]]:
    from dicom_node.index import sources as state

    persisted: dict[str, dict[str, Any]] = {}
    if config.sources.pollers and has_index(config):
        # Without an index nothing has polled yet: list the configured pollers as idle
        # rather than create a storage root from a read-only command.
        conn = existing_index(config).reader()
        try:
            persisted = state.rows(conn)
        finally:
            conn.close()
    out = []
    for poller in config.sources.pollers:
        row = persisted.get(poller.name, {})
        item: dict[str, Any] = {"name": poller.name, "kind": poller.kind, "enabled": poller.enabled}
        item.update({k: row.get(k) for k in _FIELDS})
        if not row:
            item.update(state="idle" if poller.enabled else "disabled", failures=0, polls=0, retrieved=0, seen=0)
        elif not poller.enabled:
            item["state"] = "disabled"
        out.append(item)
    return out


def _when(ts: float | None) -> str:
    if not ts:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def run_list(args: argparse.Namespace, config: NodeConfig) -> int:
    """Print every configured poller: state, last poll, retrieved/seen counts, and why it is not polling."""
    rows = _rows(config)
    if args.json:
        for row in rows:
            echo(json.dumps(row))
        return 0
    if not rows:
        echo("no pollers configured ([[sources.pollers]])")
        return 0
    echo(f"{'source':<17}{'kind':<10}{'state':<10}{'last poll':<22}{'retrieved':>10}{'seen':>8}  detail")
    for r in rows:
        if r["state"] == "stopped":
            detail = r["reason"] or ""
        elif r["state"] == "backoff":
            detail = f"until {_when(r['backoff_until'])}: {r['last_error'] or ''}"
        else:
            detail = f"last error: {r['last_error']}" if r.get("last_error") else ""
        echo(f"{r['name']:<17}{r['kind']:<10}{r['state']:<10}{_when(r['last_poll_at']):<22}"
             f"{r['retrieved'] or 0:>10}{r['seen'] or 0:>8}  {detail}")
    return 0


def run_poll_now(args: argparse.Namespace, config: NodeConfig) -> int:
    """Run one poll cycle of ``NAME`` here (see the module docstring); exit 1 when it failed."""
    poller = config.sources.poller(args.name)
    if poller is None:
        names = ", ".join(p.name for p in config.sources.pollers) or "none configured"
        echo(f"dicom-node sources: no poller {args.name!r} (pollers: {names})")
        return 1
    from dicom_node.node import Node
    from dicom_node.sources.poller import PollerService

    node = Node(config)
    node.writer.start()
    service = PollerService(node, objects=node.objects)
    try:
        report = service.run_cycle(poller.name, poller=poller, wait_lease=60.0)
    finally:
        service.stop()
        node.pipeline.close()
        node.models.close()
        node.writer.stop()
    if args.json:
        echo(json.dumps({"source": report.source, "ok": report.ok, "state": report.state, "error": report.error,
                         "studies": report.studies, "retrieved": report.retrieved, "complete": report.complete,
                         "arrived": [a.__dict__ for a in report.arrived]}))
    else:
        for a in report.arrived:
            echo(f"study {a.study_instance_uid} series {a.series_instance_uid}: {a.stored} stored, "
                 f"{a.duplicates} already here, {a.failed} refused")
        echo(f"{report.source}: {report.studies} studies examined, {report.retrieved} instances stored"
             + ("" if report.complete else " (scan not complete; the next poll continues)"))
    if not report.ok:
        echo(f"dicom-node sources: poll of {report.source!r} failed ({report.state}): {report.error}")
        return 1
    return 0
