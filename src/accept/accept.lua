-- Dedup + enqueue for one or more webhook requests, atomically (one EVALSHA per group of
-- requests: the gateway combines concurrent requests into one call). Each request is decided
-- on its own: one request refused for backpressure does not affect the others.
--
-- KEYS[1]  inbound stream          KEYS[2]  dead-letter stream
-- KEYS[3..2+n]  dedup keys (n items), per request in order: its events, then its dead letters
-- KEYS[3+n..2+2n]  the same items' legacy dedup keys (`dedup:v1:`, written by earlier
--   versions), in the same order: an item is a duplicate when either exists. Nothing is
--   written under them; they expire by themselves within the dedup TTL of the upgrade.
-- ARGV[1] dedup TTL (s)  ARGV[2] inbound max backlog  ARGV[3] dead-letter max length
-- ARGV[4] number of requests r   ARGV[5] oldest dead-letter id kept (age retention)
-- ARGV[6..5+2r] per request: number of events, number of dead letters
-- then one payload (JSON) per dedup key, in the same order
-- then one event id per event, in the same order
--
-- Returns, per request in order: {-1, backlog} when its fresh events would push the inbound
-- stream past its bound (nothing of it written), else {0, f1, f2, ...} with 1 = stored,
-- 0 = duplicate per item; then the inbound stream's length after the call and the id of the
-- last entry it appended there, as two integers ms, seq (0, 0: none). The dedup key's value
-- is the stream id the item was stored under.
local ttl = tonumber(ARGV[1])
local max_backlog = tonumber(ARGV[2])
local dl_max = tonumber(ARGV[3])
local n_req = tonumber(ARGV[4])
local dl_min_id = ARGV[5]
local dead_stored = false
local total = (#KEYS - 2) / 2
local payload_base = 5 + 2 * n_req
local id_base = payload_base + total
-- Dead-letter ids are the dedup keys without their prefix ({prefix}:dedup:v2:).
local dedup_prefix_len = string.len(KEYS[1]) - string.len('inbound') + string.len('dedup:v2:')

local function seen(i)
  return redis.call('EXISTS', KEYS[2 + i], KEYS[2 + total + i]) > 0
end

local backlog = redis.call('XLEN', KEYS[1])
local last_id = nil
local out = {}
local item = 0
local event = 0
for r = 1, n_req do
  local n_events = tonumber(ARGV[4 + 2 * r])
  local n_dead = tonumber(ARGV[5 + 2 * r])
  -- Backpressure: the common case (room for every event) costs nothing more; only near the
  -- bound are this request's fresh events counted exactly (duplicates need no room).
  local refused = false
  if n_events > 0 and backlog + n_events > max_backlog then
    local fresh = 0
    for i = 1, n_events do
      if not seen(item + i) then
        fresh = fresh + 1
      end
    end
    refused = fresh > 0 and backlog + fresh > max_backlog
  end
  if refused then
    out[#out + 1] = -1
    out[#out + 1] = backlog
    item = item + n_events + n_dead
    event = event + n_events
  else
    out[#out + 1] = 0
    for i = 1, n_events + n_dead do
      item = item + 1
      local key = KEYS[2 + item]
      local is_event = i <= n_events
      if is_event then
        event = event + 1
      end
      -- Checked per item: the same key may appear twice in a request, or in two requests.
      if not seen(item) then
        local id
        if is_event then
          id = redis.call('XADD', KEYS[1], '*', 'event_id', ARGV[id_base + event], 'event', ARGV[payload_base + item])
          backlog = backlog + 1
          last_id = id
        else
          id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', dl_max, '*', 'deadletter_id', string.sub(key, dedup_prefix_len + 1), 'deadletter', ARGV[payload_base + item])
          dead_stored = true
        end
        redis.call('SET', key, id, 'EX', ttl)
        out[#out + 1] = 1
      else
        out[#out + 1] = 0
      end
    end
  end
end
if dead_stored then
  redis.call('XTRIM', KEYS[2], 'MINID', dl_min_id)
end
out[#out + 1] = backlog
local ms, seq = 0, 0
if last_id then
  local m, q = string.match(last_id, '^(%d+)-(%d+)$')
  ms, seq = tonumber(m), tonumber(q)
end
out[#out + 1] = ms
out[#out + 1] = seq
return out
