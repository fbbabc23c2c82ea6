-- A consumer group's counts on the events stream, for /readyz and the persister lag metric.
-- (trim.lua is prepended: the lag is group_lag's, corrected after a Redis restart.)
--
-- KEYS[1] events stream   ARGV[1] group
-- Returns {pending, lag}, lag -1 when Redis cannot count it; {} when the stream or the
-- group does not exist.
local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])
if not ok then
  return {}
end
for _, g in ipairs(groups) do
  local f = {}
  for i = 1, #g, 2 do
    f[g[i]] = g[i + 1]
  end
  if f['name'] == ARGV[1] then
    local lag = group_lag(KEYS[1], ARGV[1], f)
    if type(lag) ~= 'number' then
      lag = -1
    end
    return {tonumber(f['pending']) or 0, lag}
  end
end
return {}
