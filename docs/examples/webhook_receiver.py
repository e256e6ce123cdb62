"""A webhook receiver for trying ``POST /v1/invocations`` on one machine (docs/api.md, "Invocations").

It listens on loopback, checks each POST's ``X-Signature-SHA256`` header the way
any receiver should (HMAC-SHA256 of the raw body, compared in constant time),
answers 204 when the signature holds and 401 when it does not, and prints one
line per request: ``verified`` or ``REJECTED`` followed by the JSON body. The
node retries a non-2xx answer, so a rejected delivery shows up again.

Run it with the node's key file (the node strips leading and trailing
whitespace from the file, so this does too)::

    python3 docs/examples/webhook_receiver.py --port 9000 --key var/webhook.key

Only the standard library is used, so it runs with any Python 3.11+.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def signature_ok(secret: bytes, raw_body: bytes, header: str) -> bool:
    """Return True when ``header`` is ``sha256=<hex HMAC-SHA256 of raw_body keyed with secret>``."""
    return hmac.compare_digest(header, "sha256=" + hmac.new(secret, raw_body, hashlib.sha256).hexdigest())


def make_handler(key_file: Path) -> type[BaseHTTPRequestHandler]:
    """Build a request handler that verifies signatures with the key read from ``key_file``."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the name http.server dispatches to
            raw_body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            # Read the key on every request: the node creates it at its first start,
            # which may be after this receiver started.
            secret = key_file.read_bytes().strip()
            ok = signature_ok(secret, raw_body, self.headers.get("X-Signature-SHA256", ""))
            self.send_response(204 if ok else 401)
            self.end_headers()
            # The CLI-style output is this script's purpose; it is not part of the node.
            sys.stdout.write(("verified " if ok else "REJECTED ") + raw_body.decode("utf-8", "replace") + "\n")
            sys.stdout.flush()

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's signature
            """Keep the access log quiet: the verdict line above says what happened."""

    return Handler


def main() -> int:
    """Serve until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--key", type=Path, default=Path("var/webhook.key"), help="the node's webhook key file")
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), make_handler(args.key))
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
