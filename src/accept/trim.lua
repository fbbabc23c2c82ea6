-- Retention of the events stream that never removes what the persister has not stored,
-- nor (within delivery.max_fanout_lag) what the push delivery fan-out has not read.
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

-- floor, unacknowledged count, whether some are pending (the floor is then the oldest
-- pending entry, else the last delivered one); nil when the group (or the stream) does not
-- exist.
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
      return floor, pending + lag, pending > 0
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

-- The delivery fan-out's group (`dgroup`, '' when delivery does not run): while it is at
-- most `dmax` entries behind, its floor protects entries as the persister's does. Returns
-- its floor when it protects, whether it is too far behind to (forced), and the end of
-- the entries it has read (an XRANGE end: entries up to it are read and acknowledged).
local function delivery_state(key, dgroup, dmax)
  local floor, behind, pending = persister_state(key, dgroup)
  if floor == nil then
    return nil, false, nil
  end
  local read_end = floor
  if pending then
    read_end = '(' .. floor
  end
  if behind > dmax then
    return nil, true, read_end
  end
  return floor, false, read_end
end

-- How appends trim, given the persister's floor (nil: no group): 'plain' as they go
-- (MAXLEN ~ on XADD) when no group protects anything; 'after' (trim_events once appended,
-- which counts what the fan-out had not read) when only the delivery fan-out's group exists
-- and it is too far behind; '' when a group's acknowledgements trim.
local function append_trim(key, persister, dgroup, dmax)
  if persister ~= nil then
    return ''
  end
  local dfloor, forced = delivery_state(key, dgroup, dmax)
  if forced then
    return 'after'
  end
  if dfloor == nil then
    return 'plain'
  end
  return ''
end

-- Counts entries removed before the delivery fan-out read them (next to the stream).
local function count_unread(key, n)
  if n > 0 then
    redis.call('INCRBY', key .. ':trimmed-unread', n)
  end
end

-- Trims the events stream to maxlen (0 = none) and min_id ('0' = none), never past the
-- persister's floor, nor past the delivery fan-out's while it is at most dmax behind. With
-- a floor, the entry the length cap would cut last is looked at first (at most 1000 per
-- call: a stream far over its cap after an outage shrinks over several calls). Returns how
-- many entries the fan-out had not read were removed (it was too far behind), also added
-- to the stream's `:trimmed-unread` counter.
local function trim_events(key, maxlen, min_id, group, dgroup, dmax)
  local floor = persister_state(key, group)
  local dfloor, forced, draw = delivery_state(key, dgroup, dmax)
  if dfloor ~= nil and (floor == nil or id_lt(dfloor, floor)) then
    floor = dfloor
  end
  local before, below = 0, 0
  if forced then
    before = redis.call('XLEN', key)
    -- Entries below the fan-out's floor (read already) go first; enough of them counted
    -- to tell how many of the removed ones were unread (an estimate past 10000).
    local cap = 1000
    if maxlen > 0 then
      cap = math.min(10000, math.max(cap, before - maxlen))
    end
    below = #redis.call('XRANGE', key, '-', draw, 'COUNT', cap)
  end
  if floor == nil then
    if maxlen > 0 then
      redis.call('XTRIM', key, 'MAXLEN', '~', maxlen)
    end
    if min_id ~= '0' then
      redis.call('XTRIM', key, 'MINID', '~', min_id)
    end
  else
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
  local unread = 0
  if forced then
    unread = math.max(0, before - redis.call('XLEN', key) - below)
    count_unread(key, unread)
  end
  return unread
end
