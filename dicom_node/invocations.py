"""Asynchronous invocations and their signed webhooks: two kinds of work on the node's work queue.

An invocation (``POST /v1/invocations``) is a row of the ``invocations`` table plus its upload,
kept at ``<storage.root>/tmp/inv-<request_uuid>.upload`` until it has run. The row and its
``invocation`` work are committed in one transaction; the queue (:mod:`dicom_node.workqueue`)
runs it and, when it ends, its ``webhook`` work::

    state:          queued -> running -> done | failed
    webhook_state:  none (no Webhook-Url) | waiting -> pending -> delivered | failed | refused

Every transition is committed through the index writer before the next step, so after a crash a
``running`` invocation runs again and a ``pending`` webhook is sent at its ``next_webhook_at``. The
webhook body is fixed when the invocation ends (stored in ``result``), so every retry sends the
same bytes.

Signature: header ``X-Signature-SHA256: sha256=<hex>``, the HMAC-SHA256 of the raw body keyed with
the secret. The secret is the bytes of ``api.webhook_secret_file`` or, when unset, of
``<storage.root>/webhook.key``, with leading and trailing ASCII whitespace removed
(``bytes.strip()``): a key file saved by an editor ends in a newline that the operator did not mean
as part of the key, and a receiver configured with the key as typed must still verify. The
generated file holds exactly 64 lowercase hex characters and nothing else (no newline, mode 0600),
so for it "the file's content" and "the stripped content" are the same bytes.

Retries: exponential backoff (1, 2, 4 ... s, capped, plus up to 10 % jitter; a longer Retry-After of
the receiver is honoured up to the cap) on the one :class:`~dicom_node.net.retry.RetryPolicy`, a
bounded number of attempts; the URL is checked against SSRF before every attempt and the connection
goes to the checked address; redirects are not followed.

Running the model on the upload is the front end's business (it decodes the upload the way
``/v1/predict`` does): it builds the service with its :class:`Runner`
(:func:`dicom_node.api.webhooks.invocation_service`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from dicom_node.config import NodeConfig
from dicom_node.index import Index, IndexWriter, invocations
from dicom_node.net.http import Outbound
from dicom_node.net.policy import OutboundError, OutboundRefused
from dicom_node.net.retry import RetryPolicy, parse_retry_after
from dicom_node.workqueue import DeadLetter, Done, Failed, Outcome, Retry, WorkItem, WorkQueue

log = logging.getLogger(__name__)

#: Work kinds of this module.
INVOCATION = "invocation"
WEBHOOK = "webhook"
#: Invocations run at once (each holds one predictor call; the predictor batches across callers).
INVOCATION_WORKERS = 1
#: Webhooks sent at once.
WEBHOOK_WORKERS = 2
#: Runs of an invocation whose input or output store failed transiently (a bucket invocation's fetch
#: or write answered 503, timed out): 2, 4, 8, 16 s apart, then it ends failed with the last reason.
INVOCATION_RETRY = RetryPolicy(attempts=5, initial=2.0, factor=2.0, cap=60.0, jitter=0.1)

#: An invocation row (:data:`dicom_node.index.invocations.COLUMNS`).
Row = dict[str, object]


class Runner(Protocol):
    """Runs one stored invocation (``dicom_node.api.webhooks.execute``).

    Returns ``{"prediction", "modelVersionId"}`` or ``{"error": {"code", "description"}}``; never
    raises for bad input or a model failure. An error that may pass (an object store's 503 or
    timeout) carries ``"retry": True``: the invocation runs again on :data:`INVOCATION_RETRY`.
    """

    def __call__(self, row: Row, upload: Path) -> dict[str, object]: ...


def load_secret(config: NodeConfig) -> bytes:
    """The webhook HMAC key: ``api.webhook_secret_file``, else ``<storage.root>/webhook.key`` (created 0600).

    Returns
    -------
    bytes
        The file's bytes with leading and trailing ASCII whitespace removed (see the module docstring).

    Raises
    ------
    ValueError
        When nothing but whitespace is left.
    """
    path: Path | None = config.api.webhook_secret_file
    if path is None:
        path = Path(config.storage.root) / "webhook.key"
        if not path.exists():
            _create_key(path)
    secret = Path(path).read_bytes().strip()
    if not secret:
        raise ValueError(f"webhook secret file {path} is empty")
    return secret


def _create_key(path: Path) -> None:
    """Write a new key to a temporary file, then link it into place only if no key is there yet.

    Nodes starting together on one storage root (a cluster on a shared path) all try to create the
    key: with an ``O_EXCL`` create and then a write, a second node could read the file between the
    two and find it empty. The hard link publishes the whole key at once, and only the first one.
    """
    temp = path.with_name(f".webhook.key.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(secrets.token_hex(32))  # exactly the key: no newline a receiver would have to know about
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(temp, path)
        except FileExistsError:
            return  # another node made it first: everyone signs with that one
        log.info("generated the webhook signing key file=%s", path)
    finally:
        temp.unlink(missing_ok=True)


def signature(body: bytes, secret: bytes) -> str:
    """``sha256=<hex HMAC-SHA256(secret, body)>``, the ``X-Signature-SHA256`` header value."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def upload_path(tmp_dir: Path, request_uuid: str) -> Path:
    """Where an invocation's upload waits (not ``.part``: the spool's crash cleanup keeps it)."""
    return tmp_dir / f"inv-{request_uuid}.upload"


class _Rows:
    """Reads and writes of ``invocations`` rows through the node's index."""

    def __init__(self, index: Index, writer: IndexWriter) -> None:
        self.index = index
        self.writer = writer

    def get(self, request_uuid: str) -> Row | None:
        conn = self.index.reader()
        try:
            return invocations.get(conn, request_uuid)
        finally:
            conn.close()

    def update(self, request_uuid: str, **values: object) -> None:
        values["updated_at"] = time.time()
        self.writer.run(lambda c: invocations.update(c, request_uuid, values))


class InvocationHandler:
    """Kind ``invocation``: run the model on the upload, fix the webhook body, queue the webhook."""

    def __init__(self, rows: _Rows, queue: WorkQueue, tmp_dir: Path, runner: Runner) -> None:
        self.rows = rows
        self.queue = queue
        self.tmp_dir = tmp_dir
        self.runner = runner

    def handle(self, item: WorkItem) -> Outcome:
        """Run one invocation (again, after a crash: the upload is kept until it ended)."""
        row = self.rows.get(item.ref)
        if row is None or row["state"] not in ("queued", "running"):
            return Done()
        self.rows.update(item.ref, state="running")
        with item.stage("infer"):
            outcome = self.runner(row, upload_path(self.tmp_dir, item.ref))
        error = outcome.get("error")
        reason = str(error.get("description", "")) if isinstance(error, Mapping) else None
        if reason is not None and outcome.get("retry") is True:
            # Not ended: the queue runs it again on its policy, and gives up through give_up().
            self.rows.update(item.ref, state="queued", error=reason)
            return Retry(reason)
        self._end(row, outcome, reason)
        return Failed(reason or "failed") if error is not None else Done()

    def give_up(self, item: WorkItem, state: str, reason: str) -> None:
        """End the invocation failed with ``reason`` (its webhook still reports it)."""
        row = self.rows.get(item.ref)
        if row is not None and row["state"] in ("queued", "running"):
            self._end(row, {"error": {"code": "internal_error", "description": reason}}, reason)

    def _end(self, row: Row, outcome: Mapping[str, object], reason: str | None) -> None:
        rid = str(row["id"])
        failed = reason is not None
        body = {"request_uuid": rid, "examination_id": row["examination_id"], "model": row["model"],
                "status": "failed" if failed else "done", **outcome}
        values: dict[str, object] = {
            "state": "failed" if failed else "done", "result": json.dumps(body, sort_keys=True), "error": reason,
            "updated_at": time.time(),
        }
        if row["webhook_url"]:
            values.update(webhook_state="pending", next_webhook_at=time.time())

        def op(conn: sqlite3.Connection) -> None:
            invocations.update(conn, rid, values)
            if row["webhook_url"]:
                self.queue.enqueue_in(conn, WEBHOOK, rid)

        self.rows.writer.run(op)
        self.queue.wake()
        upload_path(self.tmp_dir, rid).unlink(missing_ok=True)
        log.info("invocation %s id=%s model=%s", "failed" if failed else "done", rid, row["model"])


class WebhookHandler:
    """Kind ``webhook``: POST an ended invocation's signed result; retried on the kind's policy."""

    def __init__(self, rows: _Rows, outbound: Outbound, secret: bytes, retry: RetryPolicy) -> None:
        self.rows = rows
        self.outbound = outbound
        self.secret = secret
        self.retry = retry

    def handle(self, item: WorkItem) -> Outcome:
        """One attempt: delivered (2xx), refused by the outbound policy, or retried / given up."""
        row = self.rows.get(item.ref)
        if row is None or row["webhook_state"] != "pending":
            return Done()
        rid, attempt = item.ref, int(str(row["webhook_attempts"])) + 1
        body = str(row["result"]).encode("utf-8")
        headers = {"Content-Type": "application/json", "X-Signature-SHA256": signature(body, self.secret),
                   "X-Request-UUID": rid}
        retry_after: float | None = None
        try:
            with item.stage("post"):
                reply = self.outbound.post(str(row["webhook_url"]), body, headers)
        except OutboundRefused as exc:
            self.rows.update(rid, webhook_state="refused", webhook_attempts=attempt, webhook_error=str(exc))
            log.warning("webhook refused id=%s reason=%s", rid, exc)
            return Failed(f"refused: {exc}")
        except OutboundError as exc:
            status, why = 0, str(exc)
        else:
            status = reply.status_code
            why = f"HTTP {status}" + (" (redirects are not followed)" if 300 <= status < 400 else "")
            retry_after = parse_retry_after(reply.headers.get("Retry-After"))
        if 200 <= status < 300:
            self.rows.update(rid, webhook_state="delivered", webhook_attempts=attempt, webhook_error=None)
            log.info("webhook delivered id=%s attempts=%d", rid, attempt)
            return Done()
        if self.retry.exhausted(attempt):
            self.rows.update(rid, webhook_state="failed", webhook_attempts=attempt, webhook_error=why)
            log.warning("webhook gave up id=%s attempts=%d last=%s", rid, attempt, why)
            return DeadLetter(f"gave up after {attempt} attempts: {why}")
        # The time is fixed here, on the kind's policy, so the row shows when the next attempt comes.
        at = self.retry.next_attempt_at(attempt, time.time(), retry_after)
        self.rows.update(rid, webhook_attempts=attempt, next_webhook_at=at, webhook_error=why)
        return Retry(why, at=at)

    def give_up(self, item: WorkItem, state: str, reason: str) -> None:
        """The webhook ends ``failed`` with ``reason``."""
        self.rows.update(item.ref, webhook_state="failed", webhook_error=reason)


class InvocationService:
    """Submit and read invocations; their work runs on the node's queue once :meth:`start` registered it.

    Parameters
    ----------
    config : NodeConfig
        The webhook secret's location and the storage root.
    index, writer : Index, IndexWriter
        The node's index.
    tmp_dir : Path
        Where uploads wait (the spool's ``tmp``).
    queue : WorkQueue
        The node's work queue.
    outbound : Outbound
        The node's outbound HTTP service (SSRF policy for the caller's Webhook-Url).
    runner : Runner
        Runs the model on one upload.
    retry : RetryPolicy, optional
        Webhook retries; default 10 attempts, 1 s doubling to 300 s, 10 % jitter.
    """

    def __init__(self, config: NodeConfig, index: Index, writer: IndexWriter, tmp_dir: Path, queue: WorkQueue,
                 outbound: Outbound, runner: Runner, retry: RetryPolicy | None = None) -> None:
        self.config = config
        self.rows = _Rows(index, writer)
        self.tmp_dir = tmp_dir
        self.queue = queue
        self.outbound = outbound
        self.runner = runner
        self.retry = retry or RetryPolicy(attempts=10, initial=1.0, factor=2.0, cap=300.0, jitter=0.1)
        self._lock = threading.Lock()

    def start(self) -> None:
        """Register both kinds with the queue (idempotent): queued invocations and pending webhooks resume."""
        with self._lock:
            if self.queue.registered(INVOCATION):
                return
            secret = load_secret(self.config)
            self.queue.register(WEBHOOK, WebhookHandler(self.rows, self.outbound, secret, self.retry), WEBHOOK_WORKERS,
                                self.retry.attempts + 3, self.retry)
            self.queue.register(INVOCATION, InvocationHandler(self.rows, self.queue, self.tmp_dir, self.runner),
                                INVOCATION_WORKERS, INVOCATION_RETRY.attempts + 3, INVOCATION_RETRY)

    def stop(self) -> None:
        """Nothing of its own to stop: the node's work queue stops the running work (its state is committed)."""

    def submit(self, row: Mapping[str, object]) -> None:
        """Commit a new invocation (its upload already durable) with its work."""
        now = time.time()
        values = {**row, "state": "queued", "created_at": now, "updated_at": now,
                  "webhook_state": "waiting" if row.get("webhook_url") else "none", "webhook_attempts": 0}
        rid = str(row["id"])

        def op(conn: sqlite3.Connection) -> None:
            invocations.insert(conn, values)
            self.queue.enqueue_in(conn, INVOCATION, rid)

        self.rows.writer.run(op)
        self.queue.wake()

    def get(self, request_uuid: str) -> Row | None:
        """The row of one invocation, or None."""
        return self.rows.get(request_uuid)
