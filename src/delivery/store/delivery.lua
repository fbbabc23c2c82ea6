-- Push delivery state of one destination, every key under the destination's hash tag
-- ({<prefix>:dlv:<tenant>:<destination>}), so each call is atomic on one Cluster slot.
--
-- base..'q:'..conv   list    the conversation's queued event ids, oldest first (the head is
--                            the one being delivered; the next goes only once it is done)
-- base..'body'       hash    event id -> the event JSON sent as the body
-- base..'age'        zset    event id -> when it was queued (ms): the count and the oldest
-- base..'ready'      zset    conversation -> when its head is due (ms); not while in flight
-- base..'inflight'   zset    conversation -> when its lease ends (ms): taken by a worker
-- base..'owner'      hash    conversation -> the worker holding it
-- base..'head'       hash    conversation -> "<event id>|<failed attempts>" of its head
-- base..'recent'     zset    event id -> when it was delivered or given up (ms), the newest
--                            RECENT_KEPT: a fan-out that runs twice does not queue it again
-- base..'health'     hash    failing_since (ms), disabled (reason), disabled_at (ms)
-- base..'fence'      hash    stream partition -> the newest fan-out lease epoch that queued
--
-- KEYS[1] base..'ready' (routes the call)   ARGV[1] op   ARGV[2] base   ARGV[3] now (ms)

local op = ARGV[1]
local base = ARGV[2]
local now = tonumber(ARGV[3])
local RECENT_KEPT = 10000 -- store::RECENT_KEPT

local function qkey(conv) return base .. 'q:' .. conv end

-- enqueue: ARGV[4] max queued   ARGV[5] force ('1': redelivery, ignores `recent`)
-- ARGV[6] stream partition of the fan-out ('' = unfenced: a redelivery)   ARGV[7] its lease
-- epoch   ARGV[8..] (event id, conversation, body) triples. Per event: 1 queued, 0 already
-- queued or recently delivered, -1 the queue is full, -2 the destination is disabled.
-- A FENCED error, nothing queued, when a fan-out holding a newer epoch of that partition's
-- lease already queued here (this caller stalled past its lease: it must not queue after
-- its successor).
if op == 'enqueue' then
  local out = {}
  if ARGV[6] ~= '' then
    local epoch = tonumber(ARGV[7])
    local seen = tonumber(redis.call('HGET', base .. 'fence', ARGV[6]) or '0')
    if seen > epoch then
      return redis.error_reply('FENCED a newer fan-out lease holder queued here')
    end
    if seen < epoch then
      redis.call('HSET', base .. 'fence', ARGV[6], epoch)
    end
  end
  local disabled = redis.call('HEXISTS', base .. 'health', 'disabled') == 1
  local max = tonumber(ARGV[4])
  for i = 8, #ARGV, 3 do
    local id, conv, body = ARGV[i], ARGV[i + 1], ARGV[i + 2]
    if disabled then
      out[#out + 1] = -2
    elseif redis.call('HEXISTS', base .. 'body', id) == 1 then
      out[#out + 1] = 0
    elseif ARGV[5] ~= '1' and redis.call('ZSCORE', base .. 'recent', id) then
      out[#out + 1] = 0
    elseif redis.call('ZCARD', base .. 'age') >= max then
      out[#out + 1] = -1
    else
      redis.call('HSET', base .. 'body', id, body)
      redis.call('ZADD', base .. 'age', now, id)
      redis.call('RPUSH', qkey(conv), id)
      if not redis.call('ZSCORE', base .. 'inflight', conv)
          and not redis.call('ZSCORE', base .. 'ready', conv) then
        redis.call('ZADD', base .. 'ready', now, conv)
      end
      out[#out + 1] = 1
    end
  end
  return out
end

-- take: ARGV[4] lease end (ms)   ARGV[5] owner   ARGV[6] max in flight   ARGV[7] limit
-- Leases that ended (a worker died) put their conversation back, due now. Then up to
-- min(limit, max in flight - in flight) due conversations are leased to `owner`. Returns
-- flat (conversation, event id, body, failed attempts, queued at) tuples.
if op == 'take' then
  local expired = redis.call('ZRANGEBYSCORE', base .. 'inflight', '-inf', now)
  for _, conv in ipairs(expired) do
    redis.call('ZREM', base .. 'inflight', conv)
    redis.call('HDEL', base .. 'owner', conv)
    if redis.call('LLEN', qkey(conv)) > 0 then
      redis.call('ZADD', base .. 'ready', now, conv)
    end
  end
  if redis.call('HEXISTS', base .. 'health', 'disabled') == 1 then
    return {}
  end
  local free = tonumber(ARGV[6]) - redis.call('ZCARD', base .. 'inflight')
  local n = math.min(free, tonumber(ARGV[7]))
  if n <= 0 then
    return {}
  end
  local out = {}
  local due = redis.call('ZRANGEBYSCORE', base .. 'ready', '-inf', now, 'LIMIT', 0, n)
  for _, conv in ipairs(due) do
    redis.call('ZREM', base .. 'ready', conv)
    while true do
      local id = redis.call('LINDEX', qkey(conv), 0)
      if not id then
        redis.call('HDEL', base .. 'head', conv)
        break
      end
      local body = redis.call('HGET', base .. 'body', id)
      if body then
        redis.call('ZADD', base .. 'inflight', tonumber(ARGV[4]), conv)
        redis.call('HSET', base .. 'owner', conv, ARGV[5])
        local attempts = 0
        local h = redis.call('HGET', base .. 'head', conv)
        if h then
          local hid, ha = string.match(h, '^(.*)|(%d+)$')
          if hid == id then
            attempts = tonumber(ha)
          end
        end
        local queued = redis.call('ZSCORE', base .. 'age', id) or now
        out[#out + 1] = conv
        out[#out + 1] = id
        out[#out + 1] = body
        out[#out + 1] = attempts
        out[#out + 1] = tostring(queued)
        break
      end
      -- Erased meanwhile: skip it.
      redis.call('LPOP', qkey(conv))
      redis.call('ZREM', base .. 'age', id)
    end
  end
  return out
end

-- finish: ARGV[4] owner   ARGV[5] conversation   ARGV[6] event id
-- ARGV[7] 'done' (delivered or given up: the next event of the conversation is due now),
-- 'retry' (ARGV[8] due, ARGV[9] failed attempts so far) or 'release' (ARGV[8] due; not
-- an attempt: the destination was disabled meanwhile, or the worker stops).
-- ARGV[10] '1' when the attempt reached the receiver with a 2xx, '0' when it failed, ''
-- for neither. Returns {held, failing since (ms, 0 = not failing), more queued}: held 0
-- when the lease was lost (another worker has the conversation now; nothing changed).
if op == 'finish' then
  local conv, id = ARGV[5], ARGV[6]
  if redis.call('HGET', base .. 'owner', conv) ~= ARGV[4] then
    return {0, 0, 0}
  end
  redis.call('ZREM', base .. 'inflight', conv)
  redis.call('HDEL', base .. 'owner', conv)
  local result = ARGV[7]
  if result == 'done' then
    if redis.call('LINDEX', qkey(conv), 0) == id then
      redis.call('LPOP', qkey(conv))
    end
    redis.call('HDEL', base .. 'body', id)
    redis.call('ZREM', base .. 'age', id)
    redis.call('HDEL', base .. 'head', conv)
    redis.call('ZADD', base .. 'recent', now, id)
    local extra = redis.call('ZCARD', base .. 'recent') - RECENT_KEPT
    if extra > 0 then
      redis.call('ZREMRANGEBYRANK', base .. 'recent', 0, extra - 1)
    end
    if redis.call('LLEN', qkey(conv)) > 0 then
      redis.call('ZADD', base .. 'ready', now, conv)
    end
  elseif result == 'retry' then
    redis.call('HSET', base .. 'head', conv, id .. '|' .. ARGV[9])
    redis.call('ZADD', base .. 'ready', tonumber(ARGV[8]), conv)
  else
    if redis.call('LLEN', qkey(conv)) > 0 then
      redis.call('ZADD', base .. 'ready', tonumber(ARGV[8]), conv)
    end
  end
  local failing = 0
  if ARGV[10] == '1' then
    redis.call('HDEL', base .. 'health', 'failing_since')
  elseif ARGV[10] == '0' then
    redis.call('HSETNX', base .. 'health', 'failing_since', now)
    failing = tonumber(redis.call('HGET', base .. 'health', 'failing_since'))
  end
  local more = 0
  if redis.call('ZCARD', base .. 'ready') > 0 then
    more = 1
  end
  return {1, failing, more}
end

-- forget: ARGV[4..] conversations (a contact's erasure): their queued events are deleted.
-- Returns how many events.
if op == 'forget' then
  local n = 0
  for i = 4, #ARGV do
    local conv = ARGV[i]
    local ids = redis.call('LRANGE', qkey(conv), 0, -1)
    for _, id in ipairs(ids) do
      n = n + redis.call('HDEL', base .. 'body', id)
      redis.call('ZREM', base .. 'age', id)
    end
    redis.call('DEL', qkey(conv))
    redis.call('ZREM', base .. 'ready', conv)
    redis.call('HDEL', base .. 'head', conv)
  end
  return n
end

-- purge: the destination is deleted: every key of it.
if op == 'purge' then
  local convs = redis.call('ZRANGE', base .. 'ready', 0, -1)
  for _, c in ipairs(redis.call('ZRANGE', base .. 'inflight', 0, -1)) do
    convs[#convs + 1] = c
  end
  for _, conv in ipairs(convs) do
    redis.call('DEL', qkey(conv))
  end
  local n = redis.call('ZCARD', base .. 'age')
  redis.call('DEL', base .. 'body', base .. 'age', base .. 'ready', base .. 'inflight',
    base .. 'owner', base .. 'head', base .. 'recent', base .. 'health', base .. 'attempts',
    base .. 'attempt-seq', base .. 'fence')
  return n
end

return redis.error_reply('unknown op ' .. tostring(op))
