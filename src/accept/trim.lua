-- Retention of the events stream that never removes what the persister has not stored.
-- Prepended to publish.lua, append.lua and ack_events.lua (scripts cannot share functions).
--
-- While the persister's consumer group exists, its floor is its oldest pending entry, or,
-- with nothing pending, its last delivered entry: everything at or above the floor is
-- unpersisted (or the one entry kept for the position). Trimming only ever removes entries
-- below the floor. Without the group, trimming is plain MAXLEN ~ / MINID ~.

local function stream_id(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  if not ms then
    return tonumber(id) or 0, 0
  end
  return tonumber(ms), tonumber(seq)
end

local function id_lt(a, b)
  local am, as = stream_id(a)
  local bm, bs = stream_id(b)
  return am < bm or (am == bm and as < bs)
end

-- A group's lag (XINFO GROUPS: entries not yet delivered to it), corrected for Redis 7.0
-- forgetting part of its entries-read counter: after a restart from an AOF that was
-- rewritten since the group last read, the counter comes back from the rewrite's base while
-- the group's position comes back from the incremental file, so the lag counts entries the
-- group read long ago, and keeps counting them (the counter is only incremented from then on).
-- A group whose position is at or past the stream's last entry has nothing undelivered: its
-- counter is set right (XGROUP SETID ... ENTRIESREAD), which also puts the right value in the
-- AOF. A group still behind keeps the overstated lag until it catches up.
-- `f` is the group's XINFO GROUPS fields; returns the lag, nil when Redis cannot count it.
local function group_lag(key, group, f)
  local lag = f['lag']
  if type(lag) ~= 'number' or lag <= 0 then
    return lag
  end
  local delivered = f['last-delivered-id']
  local newest = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)[1]
  if newest ~= nil and id_lt(delivered, newest[1]) then
    return lag
  end
  local read = tonumber(f['entries-read'])
  if read ~= nil then
    redis.call('XGROUP', 'SETID', key, group, delivered, 'ENTRIESREAD', read + lag)
  end
  return 0
end

-- floor, unacknowledged count; nil when the group (or the stream) does not exist.
local function persister_state(key, group)
  if group == '' then
    return nil
  end
  local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', key)
  if not ok then
    return nil
  end
  for _, g in ipairs(groups) do
    local f = {}
    for i = 1, #g, 2 do
      f[g[i]] = g[i + 1]
    end
    if f['name'] == group then
      local floor = f['last-delivered-id']
      local pending = tonumber(f['pending']) or 0
      if pending > 0 then
        floor = redis.call('XPENDING', key, group)[2]
      end
      -- lag is nil when Redis cannot count it (deleted entries in the way): the stream's
      -- length is then an upper bound.
      local lag = group_lag(key, group, f)
      if type(lag) ~= 'number' then
        lag = redis.call('XLEN', key)
      end
      return floor, pending + lag
    end
  end
  return nil
end

-- Whether the persister group is at its backlog bound (nothing may be added), and the
-- count, given `max_backlog` (0 = no bound).
local function persister_full(key, group, max_backlog)
  local floor, unacked = persister_state(key, group)
  if floor ~= nil and max_backlog > 0 and unacked >= max_backlog then
    return true, unacked
  end
  return false, floor
end

-- Trims the events stream to maxlen (0 = none) and min_id ('0' = none), never past the
-- persister's floor. With the group present, the entry the length cap would cut last is
-- looked at first (at most 1000 per call: a stream far over its cap after an outage
-- shrinks over several calls).
local function trim_events(key, maxlen, min_id, group)
  local floor = persister_state(key, group)
  if floor == nil then
    if maxlen > 0 then
      redis.call('XTRIM', key, 'MAXLEN', '~', maxlen)
    end
    if min_id ~= '0' then
      redis.call('XTRIM', key, 'MINID', '~', min_id)
    end
    return
  end
  if maxlen > 0 then
    local excess = redis.call('XLEN', key) - maxlen
    if excess > 0 then
      local probe = redis.call('XRANGE', key, '-', '+', 'COUNT', math.min(excess, 1000))
      local last = probe[#probe][1]
      if id_lt(last, floor) then
        if excess <= 1000 then
          redis.call('XTRIM', key, 'MAXLEN', '~', maxlen)
        else
          -- Exact: removes the probed entries below `last` (a whole-node `~` trim might
          -- remove nothing here and make no progress).
          redis.call('XTRIM', key, 'MINID', last)
        end
      else
        -- Fewer entries than the excess are below the floor: remove just those.
        redis.call('XTRIM', key, 'MINID', '~', floor)
      end
    end
  end
  if min_id ~= '0' then
    if id_lt(min_id, floor) then
      redis.call('XTRIM', key, 'MINID', '~', min_id)
    else
      redis.call('XTRIM', key, 'MINID', '~', floor)
    end
  end
end
