"""``dicom-node fetch``: retrieve a study (or one series) from a remote DIMSE node into the spool.

Runs in the CLI process against the storage root of the configuration: the
same durable spool and SQLite index ``serve`` uses (a running ``serve`` may
share them; its assembler completes the fetched series). The study's series
come from a C-FIND at SERIES level, then each series is retrieved by the
remote's ``retrieve`` method:

- C-GET: instances come back on our association and are stored through a
  :class:`~dicom_node.sources.sink.RetrievalSink` (source ``qr:<remote>``).
- C-MOVE: the remote C-STOREs to our SCP. When nothing listens on
  ``scp.port`` (no ``serve`` running), an SCP is started in this process for the
  duration of the fetch.

Prints one line per series (UID, modality, stored / duplicate / failed) or JSON;
on a terminal, a progress bar on stderr counts the instances (none when piped);
exits 1 with a one-line message when the study is not found, the remote
cannot be reached, or an instance failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
import sys
from types import TracebackType
from typing import Any, Self

from dicom_node.commands.output import echo
from dicom_node.config import NodeConfig
from dicom_node.errors import ConfigError, SourceError
from dicom_node.progress import bar

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``fetch`` subcommand."""
    p = sub.add_parser("fetch", help="retrieve a study or series from a remote DICOM node (C-GET or C-MOVE)")
    p.add_argument("--from", dest="remote", required=True, metavar="NODE",
                   help="name of a [[sources.remotes]] entry")
    p.add_argument("--study", required=True, metavar="UID", help="Study Instance UID")
    p.add_argument("--series", metavar="UID", help="only this Series Instance UID")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--verbose", action="store_true", help="log to stderr as serve does")
    p.set_defaults(func=run)


class LocalStorage:
    """The storage half of a node, for commands: spool, index, writer, ingestor and an SCP.

    Enough for a :class:`~dicom_node.sources.sink.RetrievalSink` (``spool``, ``writer``,
    ``ingestor``, ``config``, ``scp.ctx.metrics``) and for C-MOVE checks (``index``).
    Unlike :meth:`Node.start <dicom_node.node.Node.start>` it runs no crash recovery:
    a ``serve`` process may be using the same storage root at the same time.

    Parameters
    ----------
    config : NodeConfig
        The validated configuration.
    """

    def __init__(self, config: NodeConfig) -> None:
        from dicom_node.index import IndexWriter
        from dicom_node.ingest import Ingestor
        from dicom_node.node import open_index
        from dicom_node.objects import ObjectStores
        from dicom_node.scp.context import ScpContext
        from dicom_node.scp.negotiation import supported_contexts
        from dicom_node.scp.server import StorageServer
        from dicom_node.spool import Spool
        from dicom_node.spool_objects import ObjectSpool

        st = config.storage
        self.config = config
        # The same shared copy as the serve process (storage.spool_url), so other nodes can read what is fetched.
        mirror = ObjectSpool(ObjectStores(config.objects), st.spool_url) if st.spool_url else None
        self.spool = Spool(st.root, fsync=st.fsync, min_free_bytes=st.min_free_bytes, mirror=mirror)
        self.index = open_index(config)
        self.writer = IndexWriter(self.index.path, durable=st.fsync)
        self.ingestor = Ingestor(self.spool, self.index, self.writer, st.duplicate_policy == "replace",
                                 config.scp.max_inflated_bytes)
        self.scp = StorageServer(ScpContext(config.scp, self.spool, self.writer, self.ingestor,
                                            supported_contexts(config.scp)))
        self.scp_started = False

    def __enter__(self) -> Self:
        self.writer.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.scp_started:
            self.scp.stop()
        self.writer.stop()

    def ensure_scp(self) -> bool:
        """Start the SCP here unless something already listens on ``scp.port``; True when started here."""
        cfg = self.config.scp
        host = "127.0.0.1" if cfg.host in ("0.0.0.0", "") else "::1" if cfg.host == "::" else cfg.host
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.settimeout(2.0)
            if cfg.port and s.connect_ex((host, cfg.port)) == 0:
                log.info("an SCP already listens on %s:%d; C-MOVE goes there", host, cfg.port)
                return False
        self.scp.start()
        self.scp_started = True
        return True


def _series_rows(source: Any, study: str, only: str | None, sink: Any) -> list[dict[str, Any]]:
    """Retrieve each series of the study; one summary row per series."""
    series = source.find_series(study)
    if only is not None:
        series = [s for s in series if s.series_instance_uid == only]
        if not series:
            raise SourceError(f"series {only} of study {study} not found at {source.remote.ae_title}")
    if not series:
        raise SourceError(f"study {study} not found at {source.remote.ae_title}@{source.remote.host}:"
                          f"{source.remote.port}")
    rows = []
    expected = [s.instances for s in series]
    # Counted in instances when the remote said how many each series holds; else in series.
    by_instance = all(n is not None for n in expected)
    total = sum(n or 0 for n in expected) if by_instance else len(series)
    with bar(total, desc=f"fetch {len(series)} series", unit="instance" if by_instance else "series") as shown:
        for number, s in enumerate(series, 1):
            shown.set_description_str(f"fetch series {number}/{len(series)} {s.modality or ''}".rstrip())
            result = source.retrieve(study, s.series_instance_uid, sink)
            rows.append({"series_instance_uid": s.series_instance_uid, "modality": s.modality, "expected": s.instances,
                         "stored": len(result.stored), "duplicates": len(result.duplicates),
                         "failed": len(result.failed), "failures": dict(result.failed)})
            shown.update((s.instances or 0) if by_instance else 1)
    return rows


def _print(rows: list[dict[str, Any]], summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        echo(json.dumps({**summary, "series": rows}))
        return
    echo(f"study {summary['study']} from {summary['remote']} ({summary['method']}) into {summary['storage_root']}")
    echo(f"{'series':<66}{'modality':<10}{'stored':>8}{'duplicate':>11}{'failed':>8}")
    for r in rows:
        echo(f"{r['series_instance_uid']:<66}{r['modality'] or '-':<10}{r['stored']:>8}{r['duplicates']:>11}"
             f"{r['failed']:>8}")
        for uid, reason in r["failures"].items():
            echo(f"  failed {uid or '(unknown instance)'}: {reason}")


def run(args: argparse.Namespace, config: NodeConfig) -> int:
    """Retrieve ``--study`` (or ``--series``) from ``--from`` and print what arrived.

    Returns
    -------
    int
        0 when every instance arrived (stored or already held), 1 otherwise.

    Raises
    ------
    ConfigError
        ``--from`` names no configured remote (exit 2).
    SourceError
        The study is unknown or the remote failed (the CLI prints it, exit 1).
    """
    from dicom_node.logs import setup_logging
    from dicom_node.sources.dimse import DimseSource

    if args.verbose:
        setup_logging(config.logging)
    else:
        logging.getLogger().addHandler(logging.NullHandler())  # keep stderr to the one-line outcome
    remote = config.sources.remote(args.remote)
    if remote is None:
        names = ", ".join(r.name for r in config.sources.remotes) or "none configured"
        raise ConfigError(f"--from {args.remote!r}: no such [[sources.remotes]] entry ({names})")
    with LocalStorage(config) as storage:
        source = DimseSource(remote, storage)
        if remote.retrieve == "c-move":
            storage.ensure_scp()
        with source.sink() as sink:
            rows = _series_rows(source, args.study, args.series, sink)
    summary = {"study": args.study, "remote": remote.name, "method": remote.retrieve,
               "storage_root": str(config.storage.root.resolve())}
    _print(rows, summary, args.json)
    failed = sum(r["failed"] for r in rows)
    if failed:
        echo(f"dicom-node fetch: {failed} instance(s) did not arrive", file=sys.stderr)
        return 1
    return 0
