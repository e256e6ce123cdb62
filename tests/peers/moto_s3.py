"""moto's S3 server on a free loopback port, IAM authentication on, with buckets created: start, use, stop.

Shared by the tests' ``s3_server`` fixture (tests/objects_peers.py) and ``bench/cluster.py``. Nothing here
imports pytest: a missing package raises :class:`MotoUnavailable` naming it, and the caller decides to
skip, fail or exit.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from tests.peers.ports import free_port, stop_process


class MotoUnavailable(RuntimeError):
    """moto (or boto3) is not installed; the message says how to install it."""


@dataclass(frozen=True)
class MotoS3:
    """A running moto S3 server: its endpoint, an IAM access key allowed ``s3:*``, and a boto3 client signed with it."""

    endpoint: str
    access_key_id: str
    secret_access_key: str
    client: Any  # boto3's S3 client (boto3 ships no type hints)


def _wait_started(proc: subprocess.Popen[bytes], port: int, timeout: float = 60.0) -> None:
    """Block until ``proc`` accepts on ``port``; raise at once, with the status, if it exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited with status {proc.returncode} before listening on port {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"moto server did not listen on port {port} within {timeout:.0f} s")


@contextmanager
def moto_s3(buckets: Sequence[str]) -> Iterator[MotoS3]:
    """Start moto's server, create an IAM user and key and ``buckets``; stop the server on exit."""
    try:
        import boto3
        import moto  # noqa: F401 - only to know the server is installed
    except ImportError as exc:
        raise MotoUnavailable("moto not installed: pip install -e '.[test]' (moto[s3], flask, flask-cors)") from exc
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    # The first three requests (create user, attach policy, create key) go unauthenticated; every
    # later one must be signed with a key IAM knows, so a wrong key or secret answers 403.
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="3")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_started(proc, port)
        boot = {"endpoint_url": endpoint, "region_name": "us-east-1", "aws_access_key_id": "bootstrap",
                "aws_secret_access_key": "bootstrap"}
        iam = boto3.client("iam", **boot)
        iam.create_user(UserName="dicom-node")
        iam.put_user_policy(UserName="dicom-node", PolicyName="s3", PolicyDocument=(
            '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}'))
        key = iam.create_access_key(UserName="dicom-node")["AccessKey"]
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=key["AccessKeyId"],
                          aws_secret_access_key=key["SecretAccessKey"])
        for bucket in buckets:
            s3.create_bucket(Bucket=bucket)
        yield MotoS3(endpoint, key["AccessKeyId"], key["SecretAccessKey"], s3)
    finally:
        stop_process(proc)
