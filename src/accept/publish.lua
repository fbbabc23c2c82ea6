-- Move routed entries from the inbound stream to the events stream, atomically per batch.
-- (trim.lua is prepended.)
--
-- KEYS[1] inbound stream   KEYS[2] events stream   KEYS[3] the partition's router lease
-- ARGV[1] consumer group   ARGV[2] events max length (0 = none)
-- ARGV[3] events min id for age retention ('0' = none)
-- ARGV[4] persister group on the events stream   ARGV[5] its most unacknowledged entries
-- ARGV[6] the lease holder publishing ('' = unfenced)
-- ARGV[7] the delivery fan-out's group ('' = delivery does not run)   ARGV[8] its most lag
-- with retention waiting for it
-- ARGV[9..] triples: inbound entry id, event id, event JSON
--
-- Fencing: a router that lost the lease (it stalled past the lease time and another took
-- over) is refused with a LEASE error before anything moves, so a conversation's events
-- are never published out of order by two routers.
--
-- Each entry reaches the events stream once. Publishing an entry deletes it from the inbound
-- stream in the same script, so an entry that still exists there has not been published by
-- anyone. Common case: one XACK acknowledges the whole batch and every entry was ours (the
-- ack count says so): publish all, then one XDEL. Otherwise (another consumer claimed and
-- moved some after we read them) each entry is published only if it still exists.
-- Returns the number moved, or -1 - n when the persister has n entries unacknowledged, at
-- its bound: then nothing is done, the entries stay pending in the inbound stream.
if ARGV[6] ~= '' and redis.call('GET', KEYS[3]) ~= ARGV[6] then
  return redis.error_reply('LEASE another router holds this partition')
end
local maxlen = tonumber(ARGV[2])
local first = 9
local n = (#ARGV - first + 1) / 3
if n < 1 then
  return 0
end
local full, state = persister_full(KEYS[2], ARGV[4], tonumber(ARGV[5]))
if full then
  return -1 - state
end
-- With the persister group (or the delivery fan-out's) present, their acknowledgements
-- trim (never past what they have not stored or read); without them, each append trims as
-- before.
local trim = append_trim(KEYS[2], state, ARGV[7], tonumber(ARGV[8]))
local plain = trim == 'plain'
local ids = {}
for i = first, #ARGV, 3 do
  ids[#ids + 1] = ARGV[i]
end

local function publish(i)
  if maxlen > 0 and plain then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', maxlen, '*', 'event_id', ARGV[i + 1], 'event', ARGV[i + 2])
  else
    redis.call('XADD', KEYS[2], '*', 'event_id', ARGV[i + 1], 'event', ARGV[i + 2])
  end
end

-- XACK / XDEL over all ids, in chunks (unpack is bounded by Lua's C stack).
local function each_chunk(cmd, ...)
  local extra = {...}
  local total = 0
  for from = 1, #ids, 1000 do
    local args = {}
    for _, a in ipairs(extra) do
      args[#args + 1] = a
    end
    for j = from, math.min(from + 999, #ids) do
      args[#args + 1] = ids[j]
    end
    total = total + redis.call(cmd, KEYS[1], unpack(args))
  end
  return total
end

local moved = 0
local acked = each_chunk('XACK', ARGV[1])
if acked == n then
  for i = first, #ARGV, 3 do
    publish(i)
  end
  moved = n
else
  for i = first, #ARGV, 3 do
    if #redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i]) > 0 then
      publish(i)
      moved = moved + 1
    end
  end
end
each_chunk('XDEL')
if plain and ARGV[3] ~= '0' then
  redis.call('XTRIM', KEYS[2], 'MINID', '~', ARGV[3])
end
if trim == 'after' then
  trim_events(KEYS[2], maxlen, ARGV[3], ARGV[4], ARGV[7], tonumber(ARGV[8]))
end
return moved
