-- The check in front of a publish transaction (redis.rs, `publish_transaction`): the
-- transaction WATCHes the lease and the fence key, then runs this, then MULTI ... EXEC. Any
-- answer but {0} bumps the fence key, so that the EXEC that follows does nothing.
-- (trim.lua is prepended.)
--
-- KEYS[1] the partition's router lease   KEYS[2] the publishing router's fence key
-- KEYS[3] inbound stream   KEYS[4] events stream
-- ARGV[1] the lease holder publishing   ARGV[2] the router group   ARGV[3] the batch's first
-- entry   ARGV[4] persister group on the events stream   ARGV[5] its most unacknowledged
--
-- Returns {0}: go on; {1}: another router holds the lease; {2, n}: the persister has n
-- entries unacknowledged, at its bound; {3}: the batch is no longer pending for this router
-- (an earlier attempt whose reply was lost published it: a transaction publishes and
-- acknowledges a whole batch or nothing, so its first entry tells).
local function refuse(reply)
  redis.call('INCR', KEYS[2])
  redis.call('PEXPIRE', KEYS[2], 60000)
  return reply
end

if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return refuse({1})
end
if #redis.call('XPENDING', KEYS[3], ARGV[2], ARGV[3], ARGV[3], 1, ARGV[1]) == 0 then
  return refuse({3})
end
local full, state = persister_full(KEYS[4], ARGV[4], tonumber(ARGV[5]))
if full then
  return refuse({2, state})
end
return {0}
