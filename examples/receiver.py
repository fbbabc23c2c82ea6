#!/usr/bin/env python3
"""A receiver of switchboard's push delivery (docs/delivery.md), standard library only.

It verifies every request the way Standard Webhooks specifies (the same check the
`standardwebhooks` package does: `Webhook(secret).verify(body, headers)`), refuses stale
timestamps, and deduplicates on `webhook-id` (the event's event_id: a retry carries the same).

    SWITCHBOARD_DESTINATION_SECRET=whsec_... python3 examples/receiver.py 9000

Answer 2xx only once the event is stored: anything else is retried, and the next event of
the same conversation waits for it.
"""
import base64
import hashlib
import hmac
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

SECRET = base64.b64decode(os.environ["SWITCHBOARD_DESTINATION_SECRET"].removeprefix("whsec_"))
TOLERANCE_SECS = 300
seen = set()  # use your database's unique key on event_id instead


def verified(headers, body: bytes) -> bool:
    msg_id = headers.get("webhook-id", "")
    ts = headers.get("webhook-timestamp", "")
    sigs = headers.get("webhook-signature", "").split(" ")
    try:
        if abs(time.time() - int(ts)) > TOLERANCE_SECS:
            return False
    except ValueError:
        return False
    mac = hmac.new(SECRET, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    expected = "v1," + base64.b64encode(mac).decode()
    return any(hmac.compare_digest(expected, s) for s in sigs)


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        if not verified(self.headers, body):
            self.send_response(401)
            self.end_headers()
            return
        event = json.loads(body)
        if event["event_id"] not in seen:
            seen.add(event["event_id"])
            print(event["kind"], event["conversation_id"] if "conversation_id" in event else "-",
                  event["event_id"], flush=True)
        self.send_response(204)
        self.end_headers()


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9000
    HTTPServer(("127.0.0.1", port), Handler).serve_forever()
