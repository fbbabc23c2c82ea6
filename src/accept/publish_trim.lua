-- Retention of the events stream after a publish transaction's appends (redis.rs,
-- `publish_transaction`; runs inside its MULTI ... EXEC): what publish.lua does as it
-- appends. (trim.lua is prepended.)
--
-- KEYS[1] events stream   ARGV[1] events max length (0 = none)
-- ARGV[2] events min id for age retention ('0' = none)   ARGV[3] persister group
-- ARGV[4] the delivery fan-out's group ('' = delivery does not run)   ARGV[5] its most lag
-- with retention waiting for it
local maxlen = tonumber(ARGV[1])
local trim = append_trim(KEYS[1], persister_state(KEYS[1], ARGV[3]), ARGV[4], tonumber(ARGV[5]))
if trim == 'plain' then
  if maxlen > 0 then
    redis.call('XTRIM', KEYS[1], 'MAXLEN', '~', maxlen)
  end
  if ARGV[2] ~= '0' then
    redis.call('XTRIM', KEYS[1], 'MINID', '~', ARGV[2])
  end
elseif trim == 'after' then
  trim_events(KEYS[1], maxlen, ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]))
end
return 0
