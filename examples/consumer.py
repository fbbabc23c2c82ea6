#!/usr/bin/env python3
"""A CRM backend reading switchboard's events stream (docs/consumers.md).

Runnable as it is against the Redis that switchboard writes to:

    pip install redis            # or: apt-get install python3-redis
    python3 examples/consumer.py --redis-url redis://127.0.0.1:6379 --prefix switchboard

Supported clients: redis-py 4.3 and later, up to the current release. The test suite runs it
with the redis-py release `pip install redis` gives (pinned in .ci/run, 8.1.0 at the time of
writing) and with Debian's python3-redis (4.3.4). redis-py 6 and later give every connection
a 5-second socket read timeout by default, shorter than a blocking XREADGROUP may wait: the
client here is created with a read timeout longer than --block-ms, so an idle stream is not
an error.

It prints one JSON line per stream entry it handles (and a summary line when it stops), so
that its decisions can be read by people and checked by tests/it/deploy.rs.

What it shows, each for a reason explained in docs/consumers.md:
- a consumer group created idempotently (XGROUP CREATE ... MKSTREAM, BUSYGROUP ignored);
- entries this consumer read before a crash are read again first (XREADGROUP with id 0);
- entries another consumer left pending are taken over once idle (XAUTOCLAIM), and an entry
  that keeps failing is parked instead of blocking the group forever;
- delivery is at least once, so every event is deduplicated on its `event_id`;
- an assignment is applied only when its `seq` is above the last one applied for that
  conversation, because several routers may publish one conversation's changes out of order.
"""

import argparse
import json
import logging
import os
import signal
import socket
import sys
import time

import redis

log = logging.getLogger("consumer")

# How much longer than a blocking read's BLOCK the client waits for Redis's answer.
READ_TIMEOUT_MARGIN_SECS = 10.0

# Compare-and-set on the conversation's last applied seq, atomically, so that two workers of
# the group handling two changes of one conversation cannot apply the older one last.
APPLY_ASSIGNMENT = """
local current = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
local seq = tonumber(ARGV[1])
if seq <= current then
  return {0, current}
end
redis.call('HSET', KEYS[1], 'seq', ARGV[1], 'assignment', ARGV[2])
return {1, current}
"""


class Consumer:
    def __init__(self, r, args):
        self.r = r
        self.args = args
        self.stream = args.stream or "{%s}:events" % args.prefix
        self.group = args.group
        self.name = args.consumer
        self.apply_assignment = r.register_script(APPLY_ASSIGNMENT)
        self.running = True
        self.last_claim = 0.0
        self.stats = {"processed": 0, "duplicates": 0, "applied": 0, "stale": 0,
                      "claimed": 0, "parked": 0, "failed": 0}

    # --- keys this consumer owns (never under switchboard's own prefix) ------------------
    def seen_key(self, event_id):
        return "%s:seen:%s" % (self.args.state_prefix, event_id)

    def conversation_key(self, conversation_id):
        return "%s:conversation:%s" % (self.args.state_prefix, conversation_id)

    def parked_stream(self):
        return "%s:parked" % self.args.state_prefix

    # --- the loop ------------------------------------------------------------------------
    def ensure_group(self):
        try:
            self.r.xgroup_create(self.stream, self.group, id=self.args.start_id, mkstream=True)
            log.info("created group %s on %s at %s", self.group, self.stream, self.args.start_id)
        except redis.ResponseError as e:
            # Another worker (or an earlier run) created it: that is the normal case.
            if "BUSYGROUP" not in str(e):
                raise

    def run(self):
        self.ensure_group()
        # Entries this consumer name was given and never acknowledged (a crash, a kill). An
        # id other than ">" reads our pending list after that id: advance past what failed
        # again, it will come back through reclaim() once idle.
        after = "0"
        while self.running:
            entries = self.read(after)
            if not entries:
                break
            self.handle_all(entries, redelivered=True)
            after = entries[-1][0]
        while self.running:
            claimed = self.reclaim()
            entries = self.read(">")
            self.handle_all(entries, redelivered=False)
            # Idle means nothing new and nothing pending anywhere in the group: an entry that
            # failed here is still ours to retry once it has been idle long enough.
            if self.args.exit_when_idle and not entries and not claimed and not self.pending():
                break
        emit({"outcome": "summary", **self.stats})

    def read(self, from_id):
        # Block only for new entries: reading our own backlog (id 0) must return at once.
        block = self.args.block_ms if from_id == ">" else None
        reply = self.r.xreadgroup(self.group, self.name, {self.stream: from_id},
                                  count=self.args.count, block=block)
        if not reply:
            return []
        return reply[0][1]

    def pending(self):
        return self.r.xpending(self.stream, self.group)["pending"]

    def reclaim(self):
        """Takes over entries other consumers of the group left pending for too long."""
        now = time.monotonic()
        if now - self.last_claim < self.args.claim_every_ms / 1000.0:
            return 0
        self.last_claim = now
        start, total = "0-0", 0
        while self.running:
            reply = self.r.xautoclaim(self.stream, self.group, self.name,
                                      min_idle_time=self.args.claim_idle_ms,
                                      start_id=start, count=self.args.count)
            # Redis 7 also returns the pending ids whose entries were trimmed away, and has
            # already dropped them from the pending list: nothing is left to do for those.
            start, entries = reply[0], reply[1]
            total += len(entries)
            self.stats["claimed"] += len(entries)
            self.handle_all(entries, redelivered=True, check_deliveries=True)
            if start == "0-0":
                break
        return total

    def handle_all(self, entries, redelivered, check_deliveries=False):
        for entry_id, fields in entries:
            if not fields:
                # Trimmed from the stream while pending: re-reading a pending list returns
                # the id without fields (no stream entry can have zero fields).
                self.r.xack(self.stream, self.group, entry_id)
                continue
            if check_deliveries and self.deliveries(entry_id) > self.args.max_deliveries:
                self.park(entry_id, fields, "too many deliveries")
                continue
            self.handle(entry_id, fields, redelivered)

    def deliveries(self, entry_id):
        info = self.r.xpending_range(self.stream, self.group, min=entry_id, max=entry_id, count=1)
        return info[0]["times_delivered"] if info else 0

    # --- one entry -----------------------------------------------------------------------
    def handle(self, entry_id, fields, redelivered):
        event_id, payload = fields.get("event_id"), fields.get("event")
        if not event_id or payload is None:
            self.park(entry_id, fields, "entry without event_id or event field")
            return
        out = {"stream_id": entry_id, "event_id": event_id, "redelivered": redelivered}
        if self.r.exists(self.seen_key(event_id)):
            self.ack(entry_id)
            self.stats["duplicates"] += 1
            emit({**out, "outcome": "duplicate"})
            return
        try:
            event = json.loads(payload)
        except ValueError as e:
            self.park(entry_id, fields, "event is not JSON: %s" % e)
            return
        try:
            out.update(self.process(event))
        except Exception:
            # Not acknowledged: it stays pending and is claimed again after claim_idle_ms.
            log.exception("processing %s failed; it will be redelivered", event_id)
            self.stats["failed"] += 1
            return
        # Recorded only after processing succeeded: a crash in between means processing the
        # event again on redelivery (so make processing idempotent), never losing it.
        pipe = self.r.pipeline(transaction=False)
        pipe.set(self.seen_key(event_id), entry_id, ex=self.args.seen_ttl_secs)
        pipe.xack(self.stream, self.group, entry_id)
        pipe.execute()
        self.stats["processed"] += 1
        emit({**out, "outcome": "processed"})

    def process(self, event):
        """Your CRM's work goes here. Returns what to report about it."""
        kind = event.get("kind")
        result = {"kind": kind}
        assignment = event.get("assignment")
        if assignment is not None and event.get("conversation_id"):
            result.update(self.assign(event["conversation_id"], assignment))
        if kind == "status":
            # e.g. mark the message status.message_id as status.state in your outbox table.
            pass
        elif kind in ("message", "reaction", "postback", "referral", "system"):
            # e.g. insert into messages keyed by event_id (an upsert keeps it idempotent).
            pass
        # Any other kind (notification, error, and kinds added later within v1): keep going.
        return result

    def assign(self, conversation_id, assignment):
        seq = int(assignment.get("seq", 0))
        applied, last = self.apply_assignment(
            keys=[self.conversation_key(conversation_id)],
            args=[seq, json.dumps(assignment, sort_keys=True)])
        result = {"conversation_id": conversation_id, "seq": seq,
                  "action": assignment.get("action"), "agent": assignment.get("agent")}
        if applied:
            self.stats["applied"] += 1
            result["assignment"] = "applied"
        else:
            # An older change arriving after a newer one (or the same one again): skip it.
            self.stats["stale"] += 1
            result.update({"assignment": "stale", "last_seq": int(last)})
        return result

    def ack(self, entry_id):
        self.r.xack(self.stream, self.group, entry_id)

    def park(self, entry_id, fields, reason):
        """Moves an entry that cannot be processed out of the way, keeping it for a person."""
        record = {k: v for k, v in (fields or {}).items()}
        record.update({"stream_id": entry_id, "reason": reason})
        pipe = self.r.pipeline(transaction=False)
        pipe.xadd(self.parked_stream(), record, maxlen=100000, approximate=True)
        pipe.xack(self.stream, self.group, entry_id)
        pipe.execute()
        self.stats["parked"] += 1
        log.warning("parked %s: %s", entry_id, reason)
        emit({"stream_id": entry_id, "event_id": record.get("event_id"), "outcome": "parked",
              "reason": reason})


def emit(obj):
    print(json.dumps(obj, sort_keys=True), flush=True)


def parse_args(argv):
    p = argparse.ArgumentParser(description="Consume switchboard's events stream.")
    p.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379"))
    p.add_argument("--prefix", default=os.environ.get("SWITCHBOARD_PREFIX", "switchboard"),
                   help="switchboard's redis.key_prefix; the stream is {PREFIX}:events")
    p.add_argument("--stream", help="the stream key, overriding --prefix")
    p.add_argument("--group", default="crm", help="consumer group: one per application")
    p.add_argument("--consumer", default="%s-%d" % (socket.gethostname(), os.getpid()),
                   help="consumer name: keep it stable per worker to recover its own entries")
    p.add_argument("--state-prefix", default="crm",
                   help="prefix of this consumer's own keys (seen ids, conversations, parked)")
    p.add_argument("--start-id", default="0",
                   help="where a new group starts: 0 = everything retained, $ = new events only")
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--block-ms", type=int, default=5000)
    p.add_argument("--claim-idle-ms", type=int, default=60000,
                   help="take over entries pending this long at another consumer")
    p.add_argument("--claim-every-ms", type=int, default=30000)
    p.add_argument("--max-deliveries", type=int, default=5,
                   help="park an entry delivered more often than this")
    p.add_argument("--seen-ttl-secs", type=int, default=8 * 24 * 3600,
                   help="how long an event_id is remembered (at least the stream's retention)")
    p.add_argument("--exit-when-idle", action="store_true",
                   help="stop once the group has nothing new and nothing pending (tests, drains)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # A blocking read waits up to block_ms on the server before it answers: the socket read
    # timeout must outlast it (redis-py's default, 5 s since 6.0, equals the default BLOCK and
    # made an idle consumer die with "Timeout reading from socket"). The margin covers a
    # loaded server; a Redis that really stops answering still times out.
    read_timeout = args.block_ms / 1000.0 + READ_TIMEOUT_MARGIN_SECS
    r = redis.Redis.from_url(args.redis_url, decode_responses=True,
                             socket_timeout=read_timeout, socket_connect_timeout=5)
    consumer = Consumer(r, args)

    def stop(signum, _frame):
        log.info("signal %d: finishing the current batch", signum)
        consumer.running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    consumer.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
