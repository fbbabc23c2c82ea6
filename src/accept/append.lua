-- Append events to the events stream unless already there (dedup by event id): how the
-- router relays assignment changes from a tenant's outbox. Relaying is at least once (an
-- interrupted relay repeats); the dedup key makes the stream see each change once.
-- (trim.lua is prepended.)
--
-- KEYS[1] events stream   KEYS[2..1+n] dedup keys, one per event (n events)
-- KEYS[2+n..1+2n] their legacy dedup keys (`dedup:v1:`, written by earlier versions), in the
--   same order: an event is skipped when either exists
-- ARGV[1] dedup TTL (s)   ARGV[2] events max length (0 = none)
-- ARGV[3] events min id for age retention ('0' = none)
-- ARGV[4] persister group on the events stream   ARGV[5] its most unacknowledged entries
-- ARGV[6] the delivery fan-out's group ('' = delivery does not run)   ARGV[7] its most lag
-- with retention waiting for it
-- ARGV[8..] pairs: event id, event JSON
-- Returns the number appended, or -1 - n when the persister is at its bound (nothing done).
local ttl = tonumber(ARGV[1])
local maxlen = tonumber(ARGV[2])
local full, state = persister_full(KEYS[1], ARGV[4], tonumber(ARGV[5]))
if full then
  return -1 - state
end
local trim = append_trim(KEYS[1], state, ARGV[6], tonumber(ARGV[7]))
local plain = trim == 'plain'
local appended = 0
local n = (#KEYS - 1) / 2
for i = 2, 1 + n do
  local j = 8 + (i - 2) * 2
  if redis.call('EXISTS', KEYS[i], KEYS[i + n]) == 0 then
    local id
    if maxlen > 0 and plain then
      id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', 'event_id', ARGV[j], 'event', ARGV[j + 1])
    else
      id = redis.call('XADD', KEYS[1], '*', 'event_id', ARGV[j], 'event', ARGV[j + 1])
    end
    redis.call('SET', KEYS[i], id, 'EX', ttl)
    appended = appended + 1
  end
end
if plain and ARGV[3] ~= '0' then
  redis.call('XTRIM', KEYS[1], 'MINID', '~', ARGV[3])
end
if trim == 'after' then
  trim_events(KEYS[1], maxlen, ARGV[3], ARGV[4], ARGV[6], tonumber(ARGV[7]))
end
return appended
