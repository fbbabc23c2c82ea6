-- Routing state operations, atomic per call. The Rust side (src/route/store/redis.rs) and
-- the memory store (memory.rs) implement the same algorithm; keep them in step.
--
-- KEYS[1]  the tenant's rule set hash ({prefix:rt:<tenant>}:ruleset): it routes the call
--          to the tenant's slot; every other key is built from ARGV[2] and shares its tag.
-- ARGV[1]  operation   ARGV[2] key base "{prefix:rt:<tenant>}:"   ARGV[3] now (ms)
-- ARGV[4..9] settings: sticky window ms, offline grace ms, keep offline (0/1),
--          auto close ms (0 = never), max queued, closed conversation ttl ms
-- ARGV[10..] the operation's arguments (see each function).
--
-- Keys under the base:
--   a:<agent>   hash  p presence, ps since, cap, cc:<ch> channel cap, l load, l:<ch>, last
--   roster      set   agents of the current rule set
--   c:<conv>    hash  st state, ag agent, la last agent, cl closed, q queue, tm team, ru rule,
--                     sg strategy, pr priority, qt queued, op opened, ch channel, meta, seq,
--                     fbq fallback queue, od overflow due, dq decided event ids, d:<event id>
--   h:<conv>    list  history (JSON), newest last, capped
--   o:<agent>   set   the agent's open conversations
--   q:<queue>   zset  queued conversations, score (100 - priority) * 1e13 + queued ms
--   queues      set   names of non-empty queues       nq  string: conversations queued
--   qc:<queue>:<channel>  string: conversations of that channel waiting in that queue
--   timers      zset  conv -> overflow due   grace zset agent -> requeue due
--   idle        zset  conv -> last contact activity
--   outbox      stream assignment changes to publish: event_id, conv, meta, assignment, at_ms

local op = ARGV[1]
local base = ARGV[2]
local now = tonumber(ARGV[3])
local sticky_window = tonumber(ARGV[4])
local grace_ms = tonumber(ARGV[5])
local keep_offline = ARGV[6] == '1'
local auto_close = tonumber(ARGV[7])
local max_queued = tonumber(ARGV[8])
local closed_ttl = tonumber(ARGV[9])

local DECISIONS_KEPT = 16
local HISTORY_KEPT = 100
local OUTBOX_MAX = 100000

local function nz(s)
  if s == nil or s == false or s == '' then
    return nil
  end
  return s
end

local function int(s)
  return tonumber(s) or 0
end

local function secs(ms)
  return string.format('%d s', math.floor(ms / 1000))
end

local function candidates_text(n)
  if n == 1 then
    return '1 candidate'
  end
  return string.format('%d candidates', n)
end

local function ckey(conv) return base .. 'c:' .. conv end
local function akey(agent) return base .. 'a:' .. agent end

local function conv_get(conv)
  local flat = redis.call('HGETALL', ckey(conv))
  local c = {}
  for i = 1, #flat, 2 do
    c[flat[i]] = flat[i + 1]
  end
  return c
end

local function agent_get(agent)
  local flat = redis.call('HGETALL', akey(agent))
  local a = {}
  for i = 1, #flat, 2 do
    a[flat[i]] = flat[i + 1]
  end
  return a
end

-- Online with room in total and on the channel: load, capacity.
local function eligible(agent, channel)
  local a = agent_get(agent)
  if a.p ~= 'online' then
    return nil
  end
  local load, cap = int(a.l), int(a.cap)
  if load >= cap then
    return nil
  end
  local cc = a['cc:' .. channel]
  if cc ~= nil and int(a['l:' .. channel]) >= int(cc) then
    return nil
  end
  return load, cap
end

local function owner_available(agent)
  local a = agent_get(agent)
  if a.p == nil then
    return false
  end
  if a.p ~= 'offline' then
    return true
  end
  return keep_offline or now < int(a.ps) + grace_ms
end

local function assign(conv, agent)
  local ch = redis.call('HGET', ckey(conv), 'ch') or ''
  local load = redis.call('HINCRBY', akey(agent), 'l', 1)
  redis.call('HINCRBY', akey(agent), 'l:' .. ch, 1)
  redis.call('HSET', akey(agent), 'last', now)
  local cap = int(redis.call('HGET', akey(agent), 'cap'))
  redis.call('SADD', base .. 'o:' .. agent, conv)
  redis.call('HSET', ckey(conv), 'st', 'open', 'ag', agent, 'op', now)
  redis.call('PERSIST', ckey(conv))
  redis.call('PERSIST', base .. 'h:' .. conv)
  return load, cap
end

-- Releases the owner of an open conversation; returns who it was.
local function release(conv)
  local ag = nz(redis.call('HGET', ckey(conv), 'ag'))
  if ag == nil then
    return nil
  end
  local ch = redis.call('HGET', ckey(conv), 'ch') or ''
  redis.call('HDEL', ckey(conv), 'ag')
  redis.call('HSET', ckey(conv), 'la', ag)
  if redis.call('EXISTS', akey(ag)) == 1 then
    if int(redis.call('HGET', akey(ag), 'l')) > 0 then
      redis.call('HINCRBY', akey(ag), 'l', -1)
    end
    if int(redis.call('HGET', akey(ag), 'l:' .. ch)) > 0 then
      redis.call('HINCRBY', akey(ag), 'l:' .. ch, -1)
    end
  end
  redis.call('SREM', base .. 'o:' .. ag, conv)
  return ag
end

local function score(priority, at)
  return string.format('%d', (100 - math.min(priority, 100)) * 10000000000000 + at)
end

-- Conversations waiting per queue and channel: a new conversation queues behind the ones
-- of its own channel only (an agent with room on SMS is not held back by WhatsApp waits).
local function qc(queue, conv)
  return base .. 'qc:' .. queue .. ':' .. (redis.call('HGET', ckey(conv), 'ch') or '')
end

local function enqueue(conv, queue, priority, at)
  redis.call('ZADD', base .. 'q:' .. queue, score(priority, at), conv)
  redis.call('INCR', qc(queue, conv))
  redis.call('SADD', base .. 'queues', queue)
  redis.call('INCR', base .. 'nq')
  redis.call('HSET', ckey(conv), 'st', 'queued', 'q', queue, 'pr', priority, 'qt', at)
  redis.call('HDEL', ckey(conv), 'ag')
  redis.call('PERSIST', ckey(conv))
  redis.call('PERSIST', base .. 'h:' .. conv)
end

local function unqueue(conv)
  local c = conv_get(conv)
  if c.st ~= 'queued' then
    return
  end
  if c.od ~= nil then
    redis.call('ZREM', base .. 'timers', conv)
    redis.call('HDEL', ckey(conv), 'od')
  end
  if c.q ~= nil then
    if redis.call('ZREM', base .. 'q:' .. c.q, conv) == 1 then
      if int(redis.call('GET', base .. 'nq')) > 0 then
        redis.call('DECR', base .. 'nq')
      end
      local k = qc(c.q, conv)
      if redis.call('DECR', k) <= 0 then
        redis.call('DEL', k)
      end
    end
    if redis.call('ZCARD', base .. 'q:' .. c.q) == 0 then
      redis.call('SREM', base .. 'queues', c.q)
    end
  end
end

local function touch(conv)
  redis.call('ZADD', base .. 'idle', now, conv)
end

local function outbox_event_id(conv, seq)
  return 'evt_' .. string.sub(redis.sha1hex('switchboard:assignment:v1:' .. conv .. ':' .. seq), 1, 32)
end

-- Records a change: seq, history and (when no message carries it) the outbox.
local function record(conv, event_id, a, outbox)
  local seq = redis.call('HINCRBY', ckey(conv), 'seq', 1)
  a.seq = seq
  if outbox then
    event_id = outbox_event_id(conv, seq)
  end
  local json = cjson.encode(a)
  local hkey = base .. 'h:' .. conv
  redis.call('RPUSH', hkey, '{"at_ms":' .. string.format('%d', now) .. ',"event_id":' .. cjson.encode(event_id) .. ',"assignment":' .. json .. '}')
  redis.call('LTRIM', hkey, -HISTORY_KEPT, -1)
  if redis.call('TTL', ckey(conv)) > 0 then
    redis.call('PEXPIRE', hkey, redis.call('PTTL', ckey(conv)))
  end
  if outbox then
    local meta = redis.call('HGET', ckey(conv), 'meta') or ''
    redis.call('XADD', base .. 'outbox', 'MAXLEN', '~', OUTBOX_MAX, '*',
      'event_id', event_id, 'conv', conv, 'meta', meta, 'assignment', json, 'at_ms', string.format('%d', now))
  end
  return json
end

local function remember(conv, event_id, freed, json)
  if event_id == nil then
    return
  end
  local f = '0'
  if freed then
    f = '1'
  end
  redis.call('HSET', ckey(conv), 'd:' .. event_id, f .. json)
  local dq = redis.call('HGET', ckey(conv), 'dq') or ''
  local ids = {}
  for id in string.gmatch(dq, '%S+') do
    ids[#ids + 1] = id
  end
  ids[#ids + 1] = event_id
  while #ids > DECISIONS_KEPT do
    redis.call('HDEL', ckey(conv), 'd:' .. table.remove(ids, 1))
  end
  redis.call('HSET', ckey(conv), 'dq', table.concat(ids, ' '))
end

local function close_conv(conv)
  redis.call('ZREM', base .. 'idle', conv)
  redis.call('HSET', ckey(conv), 'st', 'closed', 'cl', now)
  redis.call('HDEL', ckey(conv), 'q', 'ag')
  redis.call('PEXPIRE', ckey(conv), closed_ttl)
  redis.call('PEXPIRE', base .. 'h:' .. conv, closed_ttl)
end

-- The reply for one decision: assignment JSON, action, strategy, freed, wait ms (-1: none).
local function out(res, a, json, freed)
  res[#res + 1] = json
  res[#res + 1] = a.action
  res[#res + 1] = a.strategy
  if freed then
    res[#res + 1] = 1
  else
    res[#res + 1] = 0
  end
  res[#res + 1] = a.wait_ms or -1
end

-- Replies with a decision stored earlier (JSON prefixed by the freed flag).
local function out_stored(res, stored)
  local json = string.sub(stored, 2)
  local a = cjson.decode(json)
  out(res, a, json, string.sub(stored, 1, 1) == '1')
end

-- route: ARGV[10] = n, then per item: event_id, conv, channel, meta, mode, rule, queue, team,
-- strategy, priority, fallback queue, overflow ms, reason, considered, sticky, k, k candidates.
local function route_one(it, res)
  local conv = it.conv
  local eid = nz(it.event_id)
  if eid ~= nil then
    local stored = redis.call('HGET', ckey(conv), 'd:' .. eid)
    if stored then
      out_stored(res, stored)
      return
    end
  end
  if redis.call('HEXISTS', ckey(conv), 'meta') == 0 then
    redis.call('HSET', ckey(conv), 'meta', it.meta)
  end
  redis.call('HSET', ckey(conv), 'ch', it.channel)
  local c = conv_get(conv)
  local message = it.mode == 'message'
  if message then
    touch(conv)
  end
  local freed = false
  local previous = nil
  if c.st == 'open' then
    local owner = c.ag or ''
    local keep
    if it.mode == 'message' then
      keep = owner_available(owner)
    elseif it.mode == 'reopen' then
      keep = true
    else
      keep = false
    end
    if keep then
      local a = {
        action = 'kept', agent = owner, team = c.tm, queue = c.q, rule = c.ru,
        strategy = c.sg or '', reason = 'open conversation stays with its owner ' .. owner,
        queued = false, priority = int(c.pr), seq = int(c.seq),
      }
      local json = cjson.encode(a)
      remember(conv, eid, false, json)
      out(res, a, json, false)
      return
    end
    release(conv)
    freed = true
    previous = owner
  elseif c.st == 'queued' and it.mode ~= 'transfer' then
    local q = c.q or ''
    local a = {
      action = 'waiting', team = c.tm, queue = q, rule = c.ru, strategy = c.sg or '',
      reason = 'already waiting in ' .. q .. ' for ' .. secs(math.max(now - int(c.qt), 0)),
      queued = true, priority = int(c.pr), seq = int(c.seq),
    }
    local json = cjson.encode(a)
    remember(conv, eid, false, json)
    out(res, a, json, false)
    return
  elseif c.st == 'queued' then
    unqueue(conv)
  end

  local prefix = it.reason
  if previous ~= nil and message then
    prefix = 'owner ' .. previous .. ' is offline; ' .. it.reason
  end
  local a = {
    previous_agent = previous, team = nz(it.team), queue = it.queue, rule = nz(it.rule),
    strategy = it.strategy, priority = it.priority, candidates = it.considered, queued = false,
    seq = int(redis.call('HGET', ckey(conv), 'seq')),
  }
  local assigned_action = 'assigned'
  if it.mode == 'transfer' then
    assigned_action = 'transferred'
  end

  local function finish()
    if a.agent ~= nil then
      redis.call('HSET', ckey(conv), 'sg', a.strategy, 'q', it.queue, 'pr', it.priority)
      if nz(it.team) then
        redis.call('HSET', ckey(conv), 'tm', it.team)
      else
        redis.call('HDEL', ckey(conv), 'tm')
      end
      if nz(it.rule) then
        redis.call('HSET', ckey(conv), 'ru', it.rule)
      else
        redis.call('HDEL', ckey(conv), 'ru')
      end
    end
    if not message then
      touch(conv)
    end
    local json = record(conv, eid, a, not message)
    remember(conv, eid, freed, json)
    out(res, a, json, freed)
  end

  local function set_overflow()
    if nz(it.team) then
      redis.call('HSET', ckey(conv), 'tm', it.team)
    else
      redis.call('HDEL', ckey(conv), 'tm')
    end
    if nz(it.rule) then
      redis.call('HSET', ckey(conv), 'ru', it.rule)
    else
      redis.call('HDEL', ckey(conv), 'ru')
    end
    redis.call('HSET', ckey(conv), 'sg', it.strategy)
    redis.call('HDEL', ckey(conv), 'fbq')
    if nz(it.fallback) and it.overflow > 0 then
      local due = now + it.overflow
      redis.call('HSET', ckey(conv), 'fbq', it.fallback, 'od', due)
      redis.call('ZADD', base .. 'timers', due, conv)
    end
  end

  -- Sticky: back to the last agent within the window.
  local sticky = nz(it.sticky)
  if sticky ~= nil and it.mode ~= 'transfer' and sticky_window > 0 and c.la == sticky
      and int(c.cl) > 0 and now - int(c.cl) <= sticky_window then
    if eligible(sticky, it.channel) then
      local load, cap = assign(conv, sticky)
      a.action = assigned_action
      a.agent = sticky
      a.strategy = 'sticky_owner'
      a.reason = 'sticky: back to last agent ' .. sticky .. ', ' .. load .. '/' .. cap .. ' open'
      finish()
      return
    end
  end

  -- Fairness: nobody jumps a queue that is already waiting for this target.
  local waiting = int(redis.call('GET', base .. 'qc:' .. it.queue .. ':' .. it.channel))
  if waiting == 0 then
    for _, cand in ipairs(it.candidates) do
      if eligible(cand, it.channel) ~= nil then
        local l, cap = assign(conv, cand)
        a.action = assigned_action
        a.agent = cand
        a.reason = prefix .. ': ' .. cand .. ' ' .. l .. '/' .. cap .. ' open, ' .. candidates_text(it.considered)
        finish()
        return
      end
    end
  end

  local total = int(redis.call('GET', base .. 'nq'))
  if total >= max_queued then
    a.action = 'unrouted'
    a.queue = nil
    a.reason = prefix .. ': nobody eligible and the queues are full (' .. total .. ' waiting)'
    local json
    if previous ~= nil then
      close_conv(conv)
    end
    if previous ~= nil or not message then
      json = record(conv, eid, a, not message)
    else
      json = cjson.encode(a)
    end
    remember(conv, eid, freed, json)
    out(res, a, json, freed)
    return
  end
  enqueue(conv, it.queue, it.priority, now)
  set_overflow()
  a.action = 'queued'
  a.queued = true
  if waiting > 0 then
    a.reason = prefix .. ': ' .. waiting .. ' already waiting in ' .. it.queue .. ', queued behind them'
  elseif it.considered == 0 then
    a.reason = prefix .. ': no candidate online with capacity, waiting in ' .. it.queue
  else
    a.reason = prefix .. ': none of ' .. candidates_text(it.considered) .. ' has capacity now, waiting in ' .. it.queue
  end
  finish()
end

local function op_route()
  local n = tonumber(ARGV[10])
  local i = 11
  local res = {}
  for _ = 1, n do
    local it = {
      event_id = ARGV[i], conv = ARGV[i + 1], channel = ARGV[i + 2], meta = ARGV[i + 3],
      mode = ARGV[i + 4], rule = ARGV[i + 5], queue = ARGV[i + 6], team = ARGV[i + 7],
      strategy = ARGV[i + 8], priority = tonumber(ARGV[i + 9]), fallback = ARGV[i + 10],
      overflow = tonumber(ARGV[i + 11]), reason = ARGV[i + 12], considered = tonumber(ARGV[i + 13]),
      sticky = ARGV[i + 14], candidates = {},
    }
    local k = tonumber(ARGV[i + 15])
    for j = 1, k do
      it.candidates[j] = ARGV[i + 15 + j]
    end
    i = i + 16 + k
    route_one(it, res)
  end
  return res
end

-- dequeue: ARGV[10] = n, then per item: conv, queue, team, strategy, reason, considered, k,
-- k candidates. Reply per item: {} when skipped, else the decision.
local function op_dequeue()
  local n = tonumber(ARGV[10])
  local i = 11
  local res = {}
  for _ = 1, n do
    local conv, queue, team, strategy, reason = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
    local considered = tonumber(ARGV[i + 5])
    local k = tonumber(ARGV[i + 6])
    local cands = {}
    for j = 1, k do
      cands[j] = ARGV[i + 6 + j]
    end
    i = i + 7 + k
    local c = conv_get(conv)
    local chosen = nil
    if c.st == 'queued' and c.q == queue then
      for _, cand in ipairs(cands) do
        if eligible(cand, c.ch or '') then
          chosen = cand
          break
        end
      end
    end
    if chosen == nil then
      res[#res + 1] = 0
    else
      local queued_ms = int(c.qt)
      unqueue(conv)
      local load, cap = assign(conv, chosen)
      local wait = math.max(now - queued_ms, 0)
      if nz(team) then
        redis.call('HSET', ckey(conv), 'tm', team)
      else
        redis.call('HDEL', ckey(conv), 'tm')
      end
      redis.call('HSET', ckey(conv), 'sg', strategy)
      local a = {
        action = 'assigned', agent = chosen, team = nz(team), queue = queue, rule = c.ru,
        strategy = strategy,
        reason = reason .. ': ' .. chosen .. ' ' .. load .. '/' .. cap .. ' open, ' .. candidates_text(considered) .. ', after waiting ' .. secs(wait),
        queued = false, waited = true, wait_ms = wait, priority = int(c.pr), candidates = considered,
      }
      local json = record(conv, nil, a, true)
      res[#res + 1] = 1
      out(res, a, json, false)
    end
  end
  return res
end

-- transfer_agent: ARGV[10] conv, ARGV[11] agent, ARGV[12] reason.
-- Reply: {0, json, action, strategy, freed, wait} or {-1, refusal, load, cap}.
local function op_transfer_agent()
  local conv, agent, reason = ARGV[10], ARGV[11], ARGV[12]
  local c = conv_get(conv)
  if c.st ~= 'open' and c.st ~= 'queued' then
    return {-1, 'not_active', 0, 0}
  end
  local same = c.ag == agent
  if not same then
    if redis.call('EXISTS', akey(agent)) == 0 then
      return {-1, 'offline', 0, 0}
    end
    local a = agent_get(agent)
    if a.p == 'offline' or a.p == nil then
      return {-1, 'offline', 0, 0}
    end
    if int(a.l) >= int(a.cap) then
      return {-1, 'full', int(a.l), int(a.cap)}
    end
    local ch = c.ch or ''
    local cc = a['cc:' .. ch]
    if cc ~= nil and int(a['l:' .. ch]) >= int(cc) then
      return {-1, 'channel_full', 0, 0}
    end
  end
  local freed, previous, wait = false, nil, nil
  if same then
    previous = agent
  elseif c.st == 'open' then
    previous = release(conv)
    freed = true
  else
    wait = math.max(now - int(c.qt), 0)
    unqueue(conv)
  end
  local load, cap
  if same then
    load = int(redis.call('HGET', akey(agent), 'l'))
    cap = int(redis.call('HGET', akey(agent), 'cap'))
  else
    load, cap = assign(conv, agent)
  end
  redis.call('HSET', ckey(conv), 'sg', 'manual')
  local c2 = conv_get(conv)
  local a = {
    action = 'transferred', agent = agent, previous_agent = previous, team = c2.tm, queue = c2.q,
    rule = c2.ru, strategy = 'manual', reason = reason .. ', ' .. load .. '/' .. cap .. ' open',
    queued = false, priority = int(c2.pr),
  }
  if wait ~= nil then
    a.waited = true
    a.wait_ms = wait
  end
  local json = record(conv, nil, a, true)
  local res = {0}
  out(res, a, json, freed)
  return res
end

local function close_one(conv, reason, res)
  local c = conv_get(conv)
  local freed, previous = false, nil
  if c.st == 'open' then
    freed = true
    previous = release(conv)
  elseif c.st == 'queued' then
    unqueue(conv)
  else
    return false
  end
  close_conv(conv)
  local a = {
    action = 'closed', previous_agent = previous, team = c.tm, rule = c.ru,
    strategy = c.sg or '', reason = reason, queued = false,
  }
  local json = record(conv, nil, a, true)
  if res ~= nil then
    out(res, a, json, freed)
  end
  return true
end

-- close: ARGV[10] conv, ARGV[11] reason. Reply: {} when not open or queued.
local function op_close()
  local res = {}
  close_one(ARGV[10], ARGV[11], res)
  return res
end

-- presence: ARGV[10] agent, ARGV[11] presence. Reply: the previous presence.
local function op_presence()
  local agent, presence = ARGV[10], ARGV[11]
  local previous = redis.call('HGET', akey(agent), 'p') or 'offline'
  if previous ~= presence then
    redis.call('HSET', akey(agent), 'p', presence, 'ps', now)
  end
  if presence == 'offline' and not keep_offline then
    if previous ~= 'offline' or redis.call('ZSCORE', base .. 'grace', agent) == false then
      redis.call('ZADD', base .. 'grace', now + grace_ms, agent)
    end
  else
    redis.call('ZREM', base .. 'grace', agent)
  end
  return previous
end

-- sweep: grace requeues, overflows, idle closes. Reply: {requeued, overflowed, closed}.
local function op_sweep()
  local requeued, overflowed, closed = 0, 0, 0
  local due = redis.call('ZRANGEBYSCORE', base .. 'grace', '-inf', now)
  for _, agent in ipairs(due) do
    redis.call('ZREM', base .. 'grace', agent)
    local a = agent_get(agent)
    if a.p == 'offline' and not keep_offline then
      local since = int(a.ps)
      local convs = redis.call('SORT', base .. 'o:' .. agent, 'ALPHA')
      for _, conv in ipairs(convs) do
        if release(conv) ~= nil then
          local c = conv_get(conv)
          local queue = c.q or 'default'
          local priority = int(c.pr)
          enqueue(conv, queue, priority, now)
          local rec = {
            action = 'requeued', previous_agent = agent, team = c.tm, queue = queue, rule = c.ru,
            strategy = c.sg or '',
            reason = agent .. ' offline for ' .. secs(math.max(now - since, 0)) .. ': back to ' .. queue,
            queued = true, priority = priority,
          }
          record(conv, nil, rec, true)
          requeued = requeued + 1
        end
      end
    end
  end
  due = redis.call('ZRANGEBYSCORE', base .. 'timers', '-inf', now)
  for _, conv in ipairs(due) do
    redis.call('ZREM', base .. 'timers', conv)
    redis.call('HDEL', ckey(conv), 'od')
    local c = conv_get(conv)
    local fb = nz(c.fbq)
    if c.st == 'queued' and fb ~= nil then
      redis.call('HDEL', ckey(conv), 'fbq')
      local from = c.q or ''
      local priority, queued_ms = int(c.pr), int(c.qt)
      unqueue(conv)
      enqueue(conv, fb, priority, queued_ms)
      local rec = {
        action = 'overflowed', queue = fb, rule = c.ru, strategy = c.sg or '',
        reason = 'waited ' .. secs(math.max(now - queued_ms, 0)) .. ' in ' .. from .. ': overflow to ' .. fb,
        queued = true, priority = priority,
      }
      record(conv, nil, rec, true)
      overflowed = overflowed + 1
    end
  end
  if auto_close > 0 then
    local idle = redis.call('ZRANGEBYSCORE', base .. 'idle', '-inf', now - auto_close)
    for _, conv in ipairs(idle) do
      if close_one(conv, 'no message from the contact for ' .. secs(auto_close), nil) then
        closed = closed + 1
      else
        redis.call('ZREM', base .. 'idle', conv)
      end
    end
  end
  return {requeued, overflowed, closed}
end

-- apply_ruleset: ARGV[10] expected version (-1: any), ARGV[11] version, ARGV[12] json,
-- ARGV[13] origin, ARGV[14] file digest, ARGV[15] n agents, then per agent: id, capacity,
-- initial presence, m, m pairs channel/capacity. Reply: {0} or {-1, current version}.
local function op_apply_ruleset()
  local rkey = KEYS[1]
  local current = int(redis.call('HGET', rkey, 'version'))
  local expected = tonumber(ARGV[10])
  if expected >= 0 and expected ~= current then
    return {-1, current}
  end
  local roster = {}
  local n = tonumber(ARGV[15])
  local i = 16
  for _ = 1, n do
    local id, cap, presence = ARGV[i], ARGV[i + 1], ARGV[i + 2]
    local m = tonumber(ARGV[i + 3])
    roster[id] = true
    local key = akey(id)
    if redis.call('HEXISTS', key, 'p') == 0 then
      redis.call('HSET', key, 'p', presence, 'ps', now)
    end
    local fields = redis.call('HKEYS', key)
    for _, f in ipairs(fields) do
      if string.sub(f, 1, 3) == 'cc:' then
        redis.call('HDEL', key, f)
      end
    end
    redis.call('HSET', key, 'cap', cap)
    for j = 1, m do
      redis.call('HSET', key, 'cc:' .. ARGV[i + 2 + 2 * j], ARGV[i + 3 + 2 * j])
    end
    i = i + 4 + 2 * m
  end
  for _, old in ipairs(redis.call('SMEMBERS', base .. 'roster')) do
    if not roster[old] then
      local key = akey(old)
      redis.call('HSET', key, 'cap', 0)
      for _, f in ipairs(redis.call('HKEYS', key)) do
        if string.sub(f, 1, 3) == 'cc:' then
          redis.call('HDEL', key, f)
        end
      end
      redis.call('SREM', base .. 'roster', old)
    end
  end
  for id, _ in pairs(roster) do
    redis.call('SADD', base .. 'roster', id)
  end
  redis.call('HSET', rkey, 'version', ARGV[11], 'json', ARGV[12], 'origin', ARGV[13],
    'file_digest', ARGV[14], 'updated_ms', now)
  return {0}
end

-- snapshot: ARGV[10] queue head count, ARGV[11] n agents, agents..., then m convs, convs...
-- Reply: {agents: [flat hash]...}, {convs: [flat hash or {}]...}, {heads: queue, conv, score, ch, la ...}
local function op_snapshot()
  local heads_n = tonumber(ARGV[10])
  local n = tonumber(ARGV[11])
  local i = 12
  local agents = {}
  for _ = 1, n do
    agents[#agents + 1] = redis.call('HGETALL', akey(ARGV[i]))
    i = i + 1
  end
  local m = tonumber(ARGV[i])
  i = i + 1
  local convs = {}
  for _ = 1, m do
    convs[#convs + 1] = redis.call('HMGET', ckey(ARGV[i]), 'st', 'ag', 'la', 'q', 'tm', 'ru', 'sg', 'pr', 'ch', 'qt', 'op', 'cl', 'seq')
    i = i + 1
  end
  local heads = {}
  if heads_n > 0 then
    for _, q in ipairs(redis.call('SMEMBERS', base .. 'queues')) do
      local z = redis.call('ZRANGE', base .. 'q:' .. q, 0, heads_n - 1, 'WITHSCORES')
      for j = 1, #z, 2 do
        local conv = z[j]
        local c = redis.call('HMGET', ckey(conv), 'ch', 'la')
        heads[#heads + 1] = q
        heads[#heads + 1] = conv
        heads[#heads + 1] = z[j + 1]
        heads[#heads + 1] = c[1] or ''
        heads[#heads + 1] = c[2] or ''
      end
    end
  end
  return {agents, convs, heads}
end

-- queues: Reply: queue, depth, oldest queued ms ...
local function op_queues()
  local res = {}
  for _, q in ipairs(redis.call('SMEMBERS', base .. 'queues')) do
    local key = base .. 'q:' .. q
    local depth = redis.call('ZCARD', key)
    if depth > 0 then
      local oldest = 0
      -- Oldest by time, whatever the priority: the smallest queued time among members.
      local members = redis.call('ZRANGE', key, 0, -1)
      for _, conv in ipairs(members) do
        local qt = int(redis.call('HGET', ckey(conv), 'qt'))
        if oldest == 0 or qt < oldest then
          oldest = qt
        end
      end
      res[#res + 1] = q
      res[#res + 1] = depth
      res[#res + 1] = string.format('%d', oldest)
    end
  end
  return res
end

if op == 'route' then
  return op_route()
elseif op == 'dequeue' then
  return op_dequeue()
elseif op == 'transfer_agent' then
  return op_transfer_agent()
elseif op == 'close' then
  return op_close()
elseif op == 'presence' then
  return op_presence()
elseif op == 'sweep' then
  return op_sweep()
elseif op == 'apply_ruleset' then
  return op_apply_ruleset()
elseif op == 'snapshot' then
  return op_snapshot()
elseif op == 'queues' then
  return op_queues()
end
return redis.error_reply('unknown routing operation ' .. tostring(op))
