#!/usr/bin/env python3
"""An agent's app on switchboard's routing API (docs/routing.md): it follows its own work
over Server-Sent Events, goes online once that stream is open, answers the conversations
offered to it, and closes each conversation after "handling" it.

Standard library only:

    python3 examples/agent_app.py --url http://127.0.0.1:8080 --token demo-api-token \\
        --tenant demo --agent bob --handle-secs 30 --offers accept --answer-after-secs 2

Use the agent's own API key in production (POST /v1/api-keys with role "agent" and
"agent": "bob"): it can only follow and act as that agent.

What it shows:
- presence: PUT .../agents/{agent}/presence online once its stream is open (the stream
  starts after the newest event when it opens: going online first could let an offer be
  made before the stream opened, and the app would never see it), offline at exit;
- GET .../agents/{agent}/stream: one long response of `id:`/`event:`/`data:` frames and
  `:` heartbeat comments; the app never polls;
- resuming: it remembers the last `id` it handled and reconnects with `Last-Event-ID`, so
  a dropped connection (or a replica going away behind the load balancer) loses nothing
  and repeats nothing; a silence longer than three heartbeats counts as a dropped
  connection;
- ordering: events of one conversation can arrive out of order when several routers run,
  so an assignment is applied only when its `seq` is above the last one applied;
- its conversations: `action` assigned/transferred/accepted with `agent` = us → ours;
  closed, requeued, or transferred away (`previous_agent` = us) → no longer ours;
- offers (rules with `offer_timeout_secs`): `action` offered with `agent` = us is an offer
  held for us until `offer_expires_at`; the app answers it --answer-after-secs later with
  POST .../conversations/{id}/accept (or /reject, with --offers reject; --offers ignore
  lets it expire). `accepted` makes it ours; `rejected`/`expired` with `previous_agent` =
  us means it went to someone else. A 409 answer means the offer ended meanwhile;
- at start it lists what it already holds (GET .../agents/{agent}/conversations, paged);
- "handling" is checked whenever a frame or heartbeat arrives, so a close follows within
  a heartbeat of --handle-secs.

It prints one JSON line per change it applies.
"""

import argparse
import json
import signal
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request


class Api:
    def __init__(self, url, token, tenant, agent):
        self.url = url.rstrip("/")
        self.token = token
        self.base = f"/v1/tenants/{urllib.parse.quote(tenant)}/agents/{urllib.parse.quote(agent)}"
        self.tenant = tenant

    def request(self, method, path, body=None, headers=None, timeout=10):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        return urllib.request.urlopen(req, timeout=timeout)

    def json(self, method, path, body=None):
        with self.request(method, path, body) as res:
            return json.load(res)

    def presence(self, presence):
        return self.json("PUT", f"{self.base}/presence", {"presence": presence})

    def open_conversations(self):
        after = None
        while True:
            q = "?limit=100" + (f"&after={urllib.parse.quote(after, safe='')}" if after else "")
            page = self.json("GET", f"{self.base}/conversations{q}")
            if not page["items"]:
                return
            yield from page["items"]
            after = page["next_after"]

    def answer(self, conv, verb):
        """POST .../accept or .../reject; None when the offer ended meanwhile (409)."""
        path = f"/v1/tenants/{urllib.parse.quote(self.tenant)}/conversations/{conv}/{verb}"
        try:
            return self.json("POST", path)
        except urllib.error.HTTPError as e:
            if e.code == 409:  # expired, withdrawn or answered already
                return None
            raise

    def close(self, conv):
        path = f"/v1/tenants/{urllib.parse.quote(self.tenant)}/conversations/{conv}/close"
        try:
            return self.json("POST", path)
        except urllib.error.HTTPError as e:
            if e.code == 409:  # closed meanwhile (by the contact going idle, or someone)
                return None
            raise


def frames(res):
    """SSE frames of a response as dicts (id, event, data), comments as {"comment": ...}."""
    frame = {}
    for raw in res:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if frame:
                yield frame
            frame = {}
        elif line.startswith(":"):
            yield {"comment": line[1:].strip()}
        else:
            field, _, value = line.partition(":")
            frame[field] = value[1:] if value.startswith(" ") else value


class App:
    def __init__(self, api, agent, handle_secs, offers="accept", answer_after_secs=0.0):
        self.api = api
        self.agent = agent
        self.handle_secs = handle_secs
        self.offers = offers
        self.answer_after_secs = answer_after_secs
        self.offered = {}  # conversation -> when to answer its offer
        self.last_id = None
        self.seq = {}  # conversation -> last seq applied
        self.mine = {}  # conversation -> when it became ours
        self.stop = threading.Event()
        self.online = False

    def log(self, **kv):
        print(json.dumps(kv), flush=True)

    def apply(self, event):
        conv = event.get("conversation_id")
        a = event.get("assignment") or {}
        seq = a.get("seq", 0)
        if conv is None or seq <= self.seq.get(conv, 0) and a.get("action") != "kept":
            return  # an older change arriving late, or one already applied
        if a.get("action") != "kept":
            self.seq[conv] = seq
        action = a.get("action")
        if action == "offered" and a.get("agent") == self.agent:
            self.offered[conv] = time.monotonic() + self.answer_after_secs
            self.log(offered=conv, expires=a.get("offer_expires_at"), reason=a.get("reason"))
            return
        self.offered.pop(conv, None)
        if action in ("rejected", "expired") and a.get("previous_agent") == self.agent:
            self.log(offer_ended=conv, action=action, reason=a.get("reason"))
            return
        if a.get("agent") == self.agent and action in ("assigned", "transferred", "kept", "accepted"):
            if conv not in self.mine:
                self.mine[conv] = time.monotonic()
                self.log(took=conv, reason=a.get("reason"), contact=(event.get("contact") or {}).get("id"))
            elif action == "kept":
                text = ((event.get("message") or {}).get("text"))
                self.log(message=conv, text=text)
        elif conv in self.mine:
            del self.mine[conv]
            self.log(lost=conv, action=action, reason=a.get("reason"))

    def handle_due(self):
        now = time.monotonic()
        for conv, when in list(self.offered.items()):
            if now >= when and self.offers != "ignore":
                del self.offered[conv]
                # Its accepted/rejected event reaches us over the stream and is applied
                # there; a 409 means the offer ended first.
                if self.api.answer(conv, self.offers) is None:
                    self.log(offer_gone=conv)
        for conv, since in list(self.mine.items()):
            if self.handle_secs is not None and now - since >= self.handle_secs:
                self.api.close(conv)  # its `closed` event reaches us and drops it
                self.mine[conv] = float("inf")

    def follow(self, heartbeat_secs):
        backoff = 1
        while not self.stop.is_set():
            headers = {"Accept": "text/event-stream"}
            if self.last_id:
                headers["Last-Event-ID"] = self.last_id
            try:
                with self.api.request("GET", f"{self.api.base}/stream", headers=headers,
                                      timeout=3 * heartbeat_secs) as res:
                    backoff = 1
                    if not self.online:
                        # The stream's start is fixed before its first byte: from now on
                        # every offer made to us reaches us over it.
                        self.online = True
                        self.log(presence=self.api.presence("online"))
                    for f in frames(res):
                        if self.stop.is_set():
                            return
                        if "data" in f:
                            self.apply(json.loads(f["data"]))
                            self.last_id = f.get("id", self.last_id)
                        self.handle_due()
            except urllib.error.HTTPError as e:
                # 429: too many streams open for this key; anything else: wait and retry.
                self.log(stream_error=e.code)
            except (OSError, ValueError) as e:
                self.log(reconnecting=str(e))
            self.stop.wait(backoff)
            backoff = min(backoff * 2, 30)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8080")
    p.add_argument("--token", required=True)
    p.add_argument("--tenant", required=True)
    p.add_argument("--agent", required=True)
    p.add_argument("--handle-secs", type=float, default=None,
                   help="close each conversation this long after taking it")
    p.add_argument("--offers", choices=("accept", "reject", "ignore"), default="accept",
                   help="what to do with conversations offered to this agent")
    p.add_argument("--answer-after-secs", type=float, default=0.0,
                   help="answer each offer this long after it arrives")
    p.add_argument("--heartbeat-secs", type=float, default=15,
                   help="the gateway's routing.stream_heartbeat_ms, in seconds")
    args = p.parse_args()
    api = Api(args.url, args.token, args.tenant, args.agent)
    app = App(api, args.agent, args.handle_secs, args.offers, args.answer_after_secs)
    signal.signal(signal.SIGTERM, lambda *_: app.stop.set())
    for c in api.open_conversations():
        if c.get("state") == "offered":
            # Offered before we started: answer it like any other offer.
            app.offered[c["conversation_id"]] = time.monotonic() + args.answer_after_secs
            app.seq[c["conversation_id"]] = c.get("seq", 0)
            app.log(offered=c["conversation_id"], expires=c.get("offer_expires_at"))
            continue
        app.mine[c["conversation_id"]] = time.monotonic()
        app.seq[c["conversation_id"]] = c.get("seq", 0)
        app.log(holding=c["conversation_id"], since=c["since"])
    try:
        app.follow(args.heartbeat_secs)
    except KeyboardInterrupt:
        pass
    finally:
        api.presence("offline")
        app.log(stopped=True, holding=len(app.mine))
    return 0


if __name__ == "__main__":
    sys.exit(main())
