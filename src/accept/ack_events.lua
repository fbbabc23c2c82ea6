-- Acknowledge entries of the events stream for a consumer group (the persister, the
-- delivery fan-out), then apply the stream's retention, which never passes the persister's
-- floor nor (within its bound) the delivery fan-out's.
-- (trim.lua is prepended.)
--
-- KEYS[1] events stream
-- ARGV[1] group   ARGV[2] events max length (0 = none)
-- ARGV[3] events min id for age retention ('0' = none)   ARGV[4] persister group
-- ARGV[5] the delivery fan-out's group ('' = delivery does not run)   ARGV[6] its most lag
-- with retention waiting for it
-- ARGV[7..] entry ids
-- Returns the number acknowledged.
local acked = 0
for from = 7, #ARGV, 1000 do
  local args = {}
  for j = from, math.min(from + 999, #ARGV) do
    args[#args + 1] = ARGV[j]
  end
  acked = acked + redis.call('XACK', KEYS[1], ARGV[1], unpack(args))
end
trim_events(KEYS[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6]))
return acked
