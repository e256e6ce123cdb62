"""Asynchronous invocations and their signed webhooks, durable across restarts.

An invocation (``POST /v1/invocations``) is a row of the ``invocations`` table
plus its upload, kept at ``<storage.root>/tmp/inv-<request_uuid>.upload`` until
it has run. Two threads of :class:`InvocationService` move rows along::

    state:          queued -> running -> done | failed
    webhook_state:  none (no Webhook-Url) | waiting -> pending -> delivered | failed | refused

Every transition is committed through the index writer before the next step,
so after a crash ``running`` rows run again and ``pending`` webhooks are sent
at their ``next_webhook_at``. The webhook body is fixed when the invocation
ends (stored in ``result``), so every retry sends the same bytes.

Signature: header ``X-Signature-SHA256: sha256=<hex>``, the HMAC-SHA256 of the raw
body keyed with the secret. The secret is the bytes of ``api.webhook_secret_file``
or, when unset, of ``<storage.root>/webhook.key``, with leading and trailing ASCII
whitespace removed (``bytes.strip()``): a key file saved by an editor ends in a
newline that the operator did not mean as part of the key, and a receiver
configured with the key as typed must still verify. The generated file holds
exactly 64 lowercase hex characters and nothing else (no newline, mode 0600), so
for it "the file's content" and "the stripped content" are the same bytes.
Retries: exponential backoff (1, 2, 4 ... s, capped, plus up to 10 % jitter; a longer
Retry-After of the receiver is honoured up to the cap) on the one
:class:`~dicom_node.net.retry.RetryPolicy`, a bounded number of attempts; the URL is
checked against SSRF before every attempt and the connection goes to the checked
address; redirects are not followed.
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
from pathlib import Path
from typing import Any

from dicom_node.errors import DicomNodeError
from dicom_node.index import invocations
from dicom_node.net.policy import OutboundError, OutboundRefused
from dicom_node.net.retry import RetryPolicy, parse_retry_after

log = logging.getLogger(__name__)



def load_secret(config: Any) -> bytes:
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
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w", encoding="ascii") as fh:
                fh.write(secrets.token_hex(32))  # exactly the key: no newline a receiver would have to know about
            log.info("generated the webhook signing key file=%s", path)
    secret = Path(path).read_bytes().strip()
    if not secret:
        raise ValueError(f"webhook secret file {path} is empty")
    return secret


def signature(body: bytes, secret: bytes) -> str:
    """``sha256=<hex HMAC-SHA256(secret, body)>``, the ``X-Signature-SHA256`` header value."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def upload_path(tmp_dir: Path, request_uuid: str) -> Path:
    """Where an invocation's upload waits (not ``.part``: the spool's crash cleanup keeps it)."""
    return tmp_dir / f"inv-{request_uuid}.upload"


class InvocationService:
    """Runs queued invocations and delivers their webhooks.

    Parameters
    ----------
    node : dicom_node.node.Node
        The node (config, writer, index, spool, pipeline).
    attempts : int
        Webhook attempts before giving up.
    initial, cap : float
        Backoff: ``initial * 2**(attempt-1)`` seconds, at most ``cap``, plus up to 10 % jitter.
    """

    def __init__(self, node: Any, attempts: int = 10, initial: float = 1.0, cap: float = 300.0) -> None:
        self.node = node
        self.retry = RetryPolicy(attempts=attempts, initial=initial, factor=2.0, cap=cap, jitter=0.1)
        self._secret: bytes | None = None
        self._stop = threading.Event()
        self._work = threading.Event()
        self._hooks = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started = False
        self._lock = threading.Lock()

    def start(self) -> None:
        """Requeue interrupted invocations, start both threads (idempotent)."""
        with self._lock:
            if self._started:
                return
            self._started = True
        self._secret = load_secret(self.node.config)
        now = time.time()
        requeued = self.node.writer.run(lambda c: invocations.requeue_running(c, now))
        if requeued:
            log.warning("invocations interrupted by a previous run queued again count=%d", requeued)
        for name, target in (("invocations", self._work_loop), ("webhooks", self._hook_loop)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Stop both threads (work in progress finishes; its state is committed)."""
        self._stop.set()
        self._work.set()
        self._hooks.set()
        for thread in self._threads:
            thread.join(30)

    def submit(self, row: dict[str, Any]) -> None:
        """Commit a new invocation (its upload already durable) and wake the worker."""
        now = time.time()
        values = {**row, "state": "queued", "created_at": now, "updated_at": now,
                  "webhook_state": "waiting" if row.get("webhook_url") else "none", "webhook_attempts": 0}
        self.node.writer.run(lambda c: invocations.insert(c, values))
        self._work.set()

    def get(self, request_uuid: str) -> dict[str, Any] | None:
        """The row of one invocation, or None."""
        conn = self.node.index.reader()
        try:
            return invocations.get(conn, request_uuid)
        finally:
            conn.close()

    def _update(self, request_uuid: str, **values: Any) -> None:
        values["updated_at"] = time.time()
        self.node.writer.run(lambda c: invocations.update(c, request_uuid, values))

    def _claim(self) -> dict[str, Any] | None:
        return self.node.writer.run(lambda c: invocations.claim_next(c, time.time()))

    def _work_loop(self) -> None:
        while not self._stop.is_set():
            row = self._claim()
            if row is None:
                self._work.wait(1.0)
                self._work.clear()
                continue
            try:
                self._run(row)
            except (OSError, ValueError, RuntimeError, MemoryError, sqlite3.Error, DicomNodeError) as exc:
                # The row stays "running": the next start queues it again. The thread keeps serving others.
                log.exception("invocation crashed id=%s error=%s", row["id"], type(exc).__name__)

    def _run(self, row: dict[str, Any]) -> None:
        from dicom_node.api.routers.invocations import execute

        rid = row["id"]
        outcome = execute(self.node, row, upload_path(self.node.spool.tmp, rid))
        failed = "error" in outcome
        body = {"request_uuid": rid, "examination_id": row["examination_id"], "model": row["model"],
                "status": "failed" if failed else "done", **outcome}
        hook = {"webhook_state": "pending", "next_webhook_at": time.time()} if row["webhook_url"] else {}
        self._update(rid, state="failed" if failed else "done", result=json.dumps(body, sort_keys=True),
                     error=outcome["error"]["description"] if failed else None, **hook)
        upload_path(self.node.spool.tmp, rid).unlink(missing_ok=True)
        log.info("invocation %s id=%s model=%s", "failed" if failed else "done", rid, row["model"])
        self._hooks.set()

    def _due(self) -> list[dict[str, Any]]:
        conn = self.node.index.reader()
        try:
            return invocations.due_webhooks(conn, time.time())
        finally:
            conn.close()

    def _hook_loop(self) -> None:
        while not self._stop.is_set():
            due = self._due()
            for row in due:
                if self._stop.is_set():
                    return
                try:
                    self._deliver(row)
                except (OSError, ValueError, RuntimeError, sqlite3.Error, DicomNodeError) as exc:
                    log.exception("webhook delivery crashed id=%s error=%s", row["id"], type(exc).__name__)
                    self._stop.wait(1.0)  # do not spin on a row that keeps failing
            if not due:
                self._hooks.wait(0.2)
                self._hooks.clear()

    def _deliver(self, row: dict[str, Any]) -> None:
        rid, attempt = row["id"], int(row["webhook_attempts"]) + 1
        body = str(row["result"]).encode("utf-8")
        secret = self._secret or load_secret(self.node.config)
        headers = {"Content-Type": "application/json", "X-Signature-SHA256": signature(body, secret),
                   "X-Request-UUID": rid}
        retry_after: float | None = None
        try:
            reply = self.node.outbound.post(row["webhook_url"], body, headers)
        except OutboundRefused as exc:
            self._update(rid, webhook_state="refused", webhook_attempts=attempt, webhook_error=str(exc))
            log.warning("webhook refused id=%s reason=%s", rid, exc)
            return
        except OutboundError as exc:
            status, why = 0, str(exc)
        else:
            status = reply.status_code
            why = f"HTTP {status}" + (" (redirects are not followed)" if 300 <= status < 400 else "")
            retry_after = parse_retry_after(reply.headers.get("Retry-After"))
        if 200 <= status < 300:
            self._update(rid, webhook_state="delivered", webhook_attempts=attempt, webhook_error=None)
            log.info("webhook delivered id=%s attempts=%d", rid, attempt)
        elif self.retry.exhausted(attempt):
            self._update(rid, webhook_state="failed", webhook_attempts=attempt, webhook_error=why)
            log.warning("webhook gave up id=%s attempts=%d last=%s", rid, attempt, why)
        else:
            delay = self.retry.delay(attempt, retry_after)
            self._update(rid, webhook_attempts=attempt, next_webhook_at=time.time() + delay, webhook_error=why)
            log.info("webhook retry id=%s attempt=%d in=%.1fs last=%s", rid, attempt, delay, why)
