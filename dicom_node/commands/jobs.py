"""``dicom-node jobs``: inspect and replay jobs.

Every action needs an existing storage root: none is created here (exit 1 with
a line naming the root instead).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from dicom_node.commands import existing_index
from dicom_node.commands.output import echo
from dicom_node.config import NodeConfig
from dicom_node.index import jobs as job_queries


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``jobs list|show|retry|dead-letter``."""
    p = sub.add_parser("jobs", help="inspect and replay jobs (one per completed series and model)")
    jobs = p.add_subparsers(dest="jobs_command", metavar="ACTION")
    jobs.required = True
    ls = jobs.add_parser("list", help="list jobs, newest first")
    ls.add_argument("--state", help="only jobs in this state (queued, failed, dead-letter, done, ...)")
    ls.add_argument("--limit", type=int, default=50)
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    ls.set_defaults(func=run_list)
    show = jobs.add_parser("show", help="one job with its stage timings, reason and result objects")
    show.add_argument("job_id")
    show.set_defaults(func=run_show)
    retry = jobs.add_parser("retry", help="queue a failed or dead-lettered job again")
    retry.add_argument("job_id")
    retry.set_defaults(func=run_retry)
    dead = jobs.add_parser("dead-letter", help="list dead-lettered jobs (delivery gave up)")
    dead.add_argument("--json", action="store_true")
    dead.set_defaults(func=run_dead_letter, state="dead-letter", limit=1000)


def _rows(config: NodeConfig, state: str | None, limit: int) -> list[dict[str, Any]]:
    # The same view and query as GET /v1/jobs: series jobs and invocations, newest first.
    conn = existing_index(config).reader()
    try:
        return [_decode(row) for row in job_queries.list_jobs(conn, job_queries.JobFilter(status=state), limit)]
    finally:
        conn.close()


def _decode(view: job_queries.JobView) -> dict[str, Any]:
    row: dict[str, Any] = dict(view)
    for key in ("destinations", "stage_times", "details", "result"):
        if row.get(key):
            row[key] = json.loads(row[key])
    return row


def run_list(args: argparse.Namespace, config: NodeConfig) -> int:
    """Print jobs as a table or JSON lines."""
    rows = _rows(config, args.state, args.limit)
    if args.json:
        for row in rows:
            echo(json.dumps(row))
        return 0
    echo(f"{'job':<26}{'state':<13}{'model':<14}{'tries':<6}series / reason")
    for r in rows:
        what = r["reason"] or r["series_instance_uid"] or f"invocation {r['examination_id'] or ''}".rstrip()
        echo(f"{r['id']:<26}{r['state']:<13}{r['model']:<14}{r['attempts']:<6}{what}")
    return 0


def run_dead_letter(args: argparse.Namespace, config: NodeConfig) -> int:
    """List dead-lettered jobs."""
    return run_list(args, config)


def run_show(args: argparse.Namespace, config: NodeConfig) -> int:
    """Print one job as JSON; exit 1 when unknown."""
    conn = existing_index(config).reader()
    try:
        row = job_queries.find_job(conn, args.job_id)
    finally:
        conn.close()
    if row is None:
        echo(f"dicom-node jobs: no job {args.job_id!r}")
        return 1
    echo(json.dumps(_decode(row), indent=2))
    return 0


def run_retry(args: argparse.Namespace, config: NodeConfig) -> int:
    """Re-queue a failed or dead-lettered job; exit 1 when it is not in such a state."""
    conn = existing_index(config).reader()
    try:
        ok = job_queries.retry_now(conn, args.job_id, time.time())
    finally:
        conn.close()
    if not ok:
        echo(f"dicom-node jobs: {args.job_id!r} is not a failed or dead-lettered job")
        return 1
    echo(f"queued {args.job_id}")
    return 0
