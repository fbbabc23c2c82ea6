-- Move routed entries from the inbound stream to the events stream, atomically per batch.
--
-- KEYS[1] inbound stream   KEYS[2] events stream
-- ARGV[1] consumer group   ARGV[2] events max length (0 = none)
-- ARGV[3] events min id for age retention ('0' = none)
-- ARGV[4..] triples: inbound entry id, event id, event JSON
--
-- An entry is published only if this call acknowledges it (XACK returns 1): an entry that
-- another consumer already moved after claiming it is skipped, so each entry reaches the
-- events stream once. Returns the number moved.
local maxlen = tonumber(ARGV[2])
local moved = 0
for i = 4, #ARGV, 3 do
  if redis.call('XACK', KEYS[1], ARGV[1], ARGV[i]) == 1 then
    if maxlen > 0 then
      redis.call('XADD', KEYS[2], 'MAXLEN', '~', maxlen, '*', 'event_id', ARGV[i + 1], 'event', ARGV[i + 2])
    else
      redis.call('XADD', KEYS[2], '*', 'event_id', ARGV[i + 1], 'event', ARGV[i + 2])
    end
    redis.call('XDEL', KEYS[1], ARGV[i])
    moved = moved + 1
  end
end
if ARGV[3] ~= '0' then
  redis.call('XTRIM', KEYS[2], 'MINID', '~', ARGV[3])
end
return moved
