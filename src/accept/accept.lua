-- Dedup + enqueue for one webhook request, atomically (one EVALSHA per request).
--
-- KEYS[1]  inbound stream          KEYS[2]  dead-letter stream
-- KEYS[3..2+n]  dedup keys, first the n_events events, then the dead letters
-- ARGV[1] dedup TTL (s)  ARGV[2] inbound max backlog  ARGV[3] n_events
-- ARGV[4] dead-letter max length  ARGV[5..4+n] payloads (JSON), aligned with the dedup keys
-- ARGV[5+n..4+n+n_events] event ids, aligned with the events
--
-- Returns {-1, backlog} when the fresh events would push the inbound stream past its bound
-- (nothing written), else {0, f1, f2, ...}: 1 = stored, 0 = duplicate, per item.
-- The dedup key's value is the stream id the item was stored under (for debugging).
local ttl = tonumber(ARGV[1])
local max_backlog = tonumber(ARGV[2])
local n_events = tonumber(ARGV[3])
local dl_max = tonumber(ARGV[4])
local n = #KEYS - 2

-- Backpressure: the common case (room for every event of the batch) costs one XLEN; only
-- near the bound are the fresh events counted exactly (duplicates need no room).
local backlog = redis.call('XLEN', KEYS[1])
if n_events > 0 and backlog + n_events > max_backlog then
  local fresh_events = 0
  for i = 1, n_events do
    if redis.call('EXISTS', KEYS[i + 2]) == 0 then
      fresh_events = fresh_events + 1
    end
  end
  if fresh_events > 0 and backlog + fresh_events > max_backlog then
    return {-1, backlog}
  end
end

local out = {0}
for i = 1, n do
  local key = KEYS[i + 2]
  -- Checked per item, not from the first pass: the same key may appear twice in a batch.
  if redis.call('EXISTS', key) == 0 then
    local id
    if i <= n_events then
      id = redis.call('XADD', KEYS[1], '*', 'event_id', ARGV[4 + n + i], 'event', ARGV[4 + i])
    else
      id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', dl_max, '*', 'deadletter', ARGV[4 + i])
    end
    redis.call('SET', key, id, 'EX', ttl)
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
