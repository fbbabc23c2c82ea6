-- Routing state operations, atomic per call. The memory store (memory.rs) implements the
-- same algorithm step for step; the conformance suite (tests/it/routing_store.rs) holds
-- the two to identical results. Keep them in step.
--
-- KEYS[1]  the tenant's rule set hash ({prefix:rt:<tenant>}:ruleset): it routes the call
--          to the tenant's slot; every other key is built from ARGV[2] and shares its tag.
-- ARGV[1]  operation   ARGV[2] key base "{prefix:rt:<tenant>}:"   ARGV[3] now (ms)
-- ARGV[4..9] settings: sticky window ms, offline grace ms, keep offline (0/1),
--          auto close ms (0 = never), max queued, closed conversation ttl ms
-- ARGV[10..] the operation's arguments (see each function).
--
-- Keys under the base:
--   a:<agent>   hash   p presence, ps since, cap, cc:<ch> channel cap, l load, l:<ch>, last,
--                      tms teams (comma-separated), mo offers missed in a row
--   roster      set    agents of the current rule set
--   c:<conv>    string the conversation: '#' and the time of the contact's last message (13
--                      digits, ms; zeros when none: a fixed width, so that a message that
--                      changes nothing else rewrites just these bytes with SETRANGE), then
--                      four sections separated by \30: its state (JSON of the other STATE
--                      fields), its parties (JSON, for the assignment events it produces),
--                      its recent decisions that changed something (event id, space, freed
--                      flag, assignment JSON) and its history (JSON entries, newest last),
--                      the entries of a section separated by \31 (JSON never holds either).
--                      Written by earlier versions without the '#' header: read as well.
--   o:<agent>   set    the agent's open conversations
--   q:<queue>   zset   queued conversations, score (100 - priority) * 1e13 + queued ms
--   queues      set    names of non-empty queues       nq  string: conversations queued
--   qc:<queue>:<channel>  string: conversations of that channel waiting in that queue
--   timers      zset   conv -> overflow due   grace zset agent -> requeue due
--   offers      zset   conv -> offer expiry (offered conversations)
--   idle        zset   conv -> last contact activity (updated at most once a minute)
--   outbox      stream assignment changes to publish: event_id, conv, meta, assignment, at_ms
--   av          string agents version: +1 by every call that changes any agent's presence,
--                      capacity, load or last assignment, so that an engine's copy of the
--                      agents is exact as long as the version it read is current
--
-- Cost matters here (one call decides a batch, and Redis runs one script at a time): a
-- conversation is one string, read once and written once per decision; agents, queue
-- counters and the idle index are read once per call, changed in Lua and written back
-- once per call; the plans a batch shares are sent once.

local op = ARGV[1]
local base = ARGV[2]
local now = tonumber(ARGV[3])
local sticky_window = tonumber(ARGV[4])
local grace_ms = tonumber(ARGV[5])
local keep_offline = ARGV[6] == '1'
local auto_close = tonumber(ARGV[7])
local max_queued = tonumber(ARGV[8])
local closed_ttl = tonumber(ARGV[9])
local now_text = ARGV[3]

local HISTORY_KEPT = 50
local DECISIONS_KEPT = 8
local OUTBOX_MAX = 100000
local TOUCH_EVERY_MS = 60000

-- A conversation's state. Replies to the Rust side pack it as these fields joined by '|'
-- (ids, queue names, strategies and numbers never contain one).
-- qt: when it began waiting for an agent (queued, or routed and assigned at once); a
-- requeue keeps it. tk: the target it waits for (rule:<id>, rule:<id>:fallback, default,
-- team:<id>), whose requirements the engine applies when it serves the queue. fbq, fbt,
-- fbs: the fallback queue (= its target key), team and strategy after od. lm: last
-- message from the contact. ox: an offered conversation's offer expiry; om: its rule's
-- missed offers before away; dc: agents who declined it (comma-separated, most recent
-- last); ov: its rule's overflow wait (ms), to re-arm the overflow after a declined offer.
local STATE = {'st', 'ag', 'la', 'cl', 'q', 'tm', 'ru', 'sg', 'pr', 'qt', 'seq', 'ch', 'fbq',
  'od', 'tch', 'op', 'dn', 'hn', 'tk', 'fbt', 'fbs', 'lm', 'ox', 'om', 'dc', 'ov'}
local DECLINED_KEPT = 20
local RS, US = '\30', '\31'

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

local function score(priority, at)
  return string.format('%d', (100 - math.min(priority, 100)) * 10000000000000 + at)
end

local function ckey(conv) return base .. 'c:' .. conv end
local function akey(agent) return base .. 'a:' .. agent end
local function qc(queue, ch) return base .. 'qc:' .. queue .. ':' .. ch end

-- What one call changes, written back by flush().
local ctx = {
  agents = {},      -- id -> cached agent (see agent())
  agents_changed = false, -- presence or capacity changed (not through agent())
  counters = {},    -- key -> value (nq, qc:*)
  dirty_counters = {},
  idle_add = {},    -- conv -> true: ZADD idle now
  idle_rem = {},    -- conv -> true: ZREM idle
}

-- Agents ------------------------------------------------------------------------------

local function agent(id)
  local a = ctx.agents[id]
  if a then
    return a
  end
  local flat = redis.call('HGETALL', akey(id))
  a = {exists = #flat > 0, cc = {}, lc = {}, add = {}, rem = {}, dirty = false}
  for i = 1, #flat, 2 do
    local k, v = flat[i], flat[i + 1]
    if k == 'p' then
      a.p = v
    elseif k == 'ps' then
      a.ps = int(v)
    elseif k == 'cap' then
      a.cap = int(v)
    elseif k == 'l' then
      a.l = int(v)
    elseif k == 'tms' then
      a.tms = v
    elseif string.sub(k, 1, 3) == 'cc:' then
      a.cc[string.sub(k, 4)] = int(v)
    elseif string.sub(k, 1, 2) == 'l:' then
      a.lc[string.sub(k, 3)] = int(v)
    end
  end
  a.l = a.l or 0
  a.cap = a.cap or 0
  ctx.agents[id] = a
  return a
end

-- Online with room in total and on the channel: load, capacity; else nil.
local function check(id, ch)
  local a = agent(id)
  if a.p ~= 'online' or a.l >= a.cap then
    return nil
  end
  if a.cc[ch] ~= nil and (a.lc[ch] or 0) >= a.cc[ch] then
    return nil
  end
  return a.l, a.cap
end

-- The team to report for `id` taking a conversation planned for `team`: that team when
-- they are in it, else their first team (nil: none).
local function team_of(id, team)
  local tms = agent(id).tms
  if tms == nil or tms == '' then
    return nil
  end
  local first = nil
  for t in string.gmatch(tms, '[^,]+') do
    if t == team then
      return t
    end
    first = first or t
  end
  return first
end

local function owner_available(id)
  local a = agent(id)
  if not a.p then
    return false
  end
  if a.p ~= 'offline' then
    return true
  end
  return keep_offline or now < int(a.ps) + grace_ms
end

-- Conversation ------------------------------------------------------------------------

local function pack_state(c)
  local t = {}
  for i, k in ipairs(STATE) do
    local v = c[k]
    if v == nil then
      t[i] = ''
    elseif type(v) == 'number' then
      t[i] = string.format('%d', v)
    else
      t[i] = v
    end
  end
  return table.concat(t, '|')
end

local function sections(raw, from)
  local out = {}
  for _ = 1, 3 do
    local p = string.find(raw, RS, from, true)
    if not p then
      break
    end
    out[#out + 1] = string.sub(raw, from, p - 1)
    from = p + 1
  end
  out[#out + 1] = string.sub(raw, from)
  return out
end

-- A loaded conversation is its state table (STATE fields only, all strings, so that
-- encoding it back is cheap) plus, in BOOK, its other sections, the state it had, whether
-- it was stored with the last message header (hdr) and whether anything but the last
-- message time changed since it was loaded (dirty: then save() writes it whole).
local BOOK = {}
local LM_WIDTH = 13
local NO_LM = string.rep('0', LM_WIDTH)

local function load(conv)
  local raw = redis.call('GET', ckey(conv))
  local c, b
  if raw then
    local from, lm = 1, nil
    if string.byte(raw, 1) == 35 then
      lm = string.sub(raw, 2, 1 + LM_WIDTH)
      from = 2 + LM_WIDTH
    end
    local sec = sections(raw, from)
    c = cjson.decode(sec[1])
    if lm ~= nil then
      c.lm = nil
      if lm ~= NO_LM then
        c.lm = tostring(tonumber(lm))
      end
    end
    b = {meta = sec[2] or '', dec = sec[3] or '', hist = sec[4] or '', hdr = lm ~= nil}
  else
    c = {}
    b = {meta = '', dec = '', hist = '', dirty = true}
  end
  b.st0 = c.st
  BOOK[c] = b
  return c
end

-- The header's digits for a last message time (a string of ms, nil when none); capped at 13
-- digits (the year 2286).
local function lm_header(lm)
  if lm == nil then
    return NO_LM
  end
  return string.format('%013d', math.min(int(lm), 9999999999999))
end

-- Writes the conversation; a closed (or never routed) one is forgotten after closed_ttl,
-- one that becomes active again is kept.
local function save(conv, c)
  local b = BOOK[c]
  local lm = c.lm
  c.lm = nil
  local value = '#' .. lm_header(lm) .. cjson.encode(c) .. RS .. b.meta .. RS .. b.dec
    .. RS .. b.hist
  c.lm = lm
  if c.st == nil or (c.st == 'closed' and b.st0 ~= 'closed') then
    redis.call('SET', ckey(conv), value, 'PX', closed_ttl)
  elseif c.st == 'closed' then
    redis.call('SET', ckey(conv), value, 'KEEPTTL')
  else
    redis.call('SET', ckey(conv), value)
  end
end

-- Appends an entry to a section, dropping the oldest past `cap`; `n` is its count field.
local function append(c, section, n, entry, cap)
  local b = BOOK[c]
  local count = int(c[n]) + 1
  if b[section] == '' then
    b[section] = entry
  else
    b[section] = b[section] .. US .. entry
  end
  if count > cap then
    local p = string.find(b[section], US, 1, true)
    b[section] = string.sub(b[section], p + 1)
    count = cap
  end
  c[n] = tostring(count)
end

-- The decision recorded for `event_id`, if this conversation still has it.
local function stored_decision(c, event_id)
  local key = event_id .. ' '
  local dec = BOOK[c].dec
  local from = 1
  while true do
    local p = string.find(dec, key, from, true)
    if not p then
      return nil
    end
    if p == 1 or string.sub(dec, p - 1, p - 1) == US then
      local e = string.find(dec, US, p, true)
      return string.sub(dec, p + #key, (e or 0) - 1)
    end
    from = p + 1
  end
end

-- The idle index: for a message (`throttle`) at most once a minute.
local function touch(c, conv, throttle)
  if throttle and c.tch and now - int(c.tch) < TOUCH_EVERY_MS then
    return
  end
  ctx.idle_add[conv] = true
  ctx.idle_rem[conv] = nil
  c.tch = now_text
  BOOK[c].dirty = true
end

local function untouch(c, conv)
  ctx.idle_rem[conv] = true
  ctx.idle_add[conv] = nil
  c.tch = nil
end

-- A decision in the compact form src/route/store/outcome.rs reads (Rust words the reason
-- and writes the JSON: doing it here cost more than the decision itself). `a` holds the
-- assignment's fields and `why` with its figures (load, cap, n, ms, from, text).
local GS = '\29'
local function compact(a)
  local function o(v)
    if v == nil or v == false then
      return ''
    end
    return v
  end
  local q, w = '', ''
  if a.queued then
    q = '1'
  end
  if a.waited then
    w = '1'
  end
  return table.concat({a.why, a.action, o(a.agent), o(a.previous_agent), o(a.team), o(a.queue),
    o(a.rule), o(a.strategy), q, w, o(a.wait_ms), o(a.priority), o(a.candidates), o(a.seq),
    o(a.load), o(a.cap), o(a.n), o(a.ms), o(a.from), o(a.text), o(a.ox)}, GS)
end

local function outbox_event_id(conv, seq)
  return 'evt_' .. string.sub(redis.sha1hex('switchboard:assignment:v1:' .. conv .. ':' .. seq), 1, 32)
end

-- Records a change: seq, history and (when no message carries it) the outbox.
local function record(c, conv, event_id, a, outbox)
  local seq = int(c.seq) + 1
  c.seq = tostring(seq)
  a.seq = seq
  if outbox then
    event_id = outbox_event_id(conv, seq)
  end
  local json = compact(a)
  append(c, 'hist', 'hn', now_text .. ' ' .. (event_id or '') .. ' ' .. json, HISTORY_KEPT)
  if outbox then
    redis.call('XADD', base .. 'outbox', 'MAXLEN', '~', OUTBOX_MAX, '*',
      'event_id', event_id, 'conv', conv, 'meta', BOOK[c].meta, 'assignment', json,
      'at_ms', now_text)
  end
  return json
end

-- Decisions by event id, for idempotent reprocessing: the conversation's last
-- DECISIONS_KEPT.
local function remember(c, event_id, freed, json)
  if event_id == nil then
    return
  end
  local f = '0'
  if freed then
    f = '1'
  end
  append(c, 'dec', 'dn', event_id .. ' ' .. f .. json, DECISIONS_KEPT)
end

-- The reply for one decision: the compact outcome, freed (1/0).
local function out(res, a, json, freed)
  res[#res + 1] = json
  if freed then
    res[#res + 1] = 1
  else
    res[#res + 1] = 0
  end
end

-- Replies with a decision stored earlier (the compact outcome prefixed by the freed flag).
local function out_stored(res, stored)
  res[#res + 1] = string.sub(stored, 2)
  if string.sub(stored, 1, 1) == '1' then
    res[#res + 1] = 1
  else
    res[#res + 1] = 0
  end
end

-- Gives `conv` a slot of `id` (check() said there is room). Returns the new load.
local function assign(c, conv, id)
  local a = agent(id)
  a.l = a.l + 1
  a.lc[c.ch] = (a.lc[c.ch] or 0) + 1
  a.last = now
  a.dirty = true
  a.add[conv] = true
  a.rem[conv] = nil
  c.st = 'open'
  c.ag = id
  c.op = now_text
  return a.l
end

-- Releases the owner of an open (or offered) conversation; returns who it was.
local function release(c, conv)
  local id = c.ag
  if id == nil then
    return nil
  end
  if c.ox ~= nil then
    redis.call('ZREM', base .. 'offers', conv)
    c.ox = nil
  end
  local a = agent(id)
  if a.exists then
    a.l = math.max(a.l - 1, 0)
    if a.lc[c.ch] ~= nil then
      a.lc[c.ch] = math.max(a.lc[c.ch] - 1, 0)
    end
    a.dirty = true
  end
  a.rem[conv] = true
  a.add[conv] = nil
  c.la = id
  c.ag = nil
  return id
end

-- Turns the assignment just made (assign()) into an offer to `id` that expires after
-- `ms`; fills the decision `a`.
local function make_offer(c, conv, a, ms, max_missed)
  c.st = 'offered'
  c.ox = string.format('%d', now + ms)
  c.om = tostring(max_missed)
  redis.call('ZADD', base .. 'offers', c.ox, conv)
  a.action = 'offered'
  a.ox = c.ox
  a.ms = ms
  a.why = 'offered'
end

-- Queues ------------------------------------------------------------------------------

local function counter(key)
  local v = ctx.counters[key]
  if v == nil then
    v = int(redis.call('GET', key))
    ctx.counters[key] = v
  end
  return v
end

local function bump(key, d)
  ctx.counters[key] = math.max(counter(key) + d, 0)
  ctx.dirty_counters[key] = true
end

local function enqueue(c, conv, queue, priority, at)
  redis.call('ZADD', base .. 'q:' .. queue, score(priority, at), conv)
  redis.call('SADD', base .. 'queues', queue)
  bump(base .. 'nq', 1)
  bump(qc(queue, c.ch), 1)
  c.st = 'queued'
  c.q = queue
  c.pr = tostring(priority)
  c.qt = string.format('%d', at)
  c.ag = nil
end

local function unqueue(c, conv)
  if c.st ~= 'queued' then
    return
  end
  if c.od ~= nil then
    redis.call('ZREM', base .. 'timers', conv)
    c.od = nil
  end
  if c.q ~= nil then
    if redis.call('ZREM', base .. 'q:' .. c.q, conv) == 1 then
      bump(base .. 'nq', -1)
      bump(qc(c.q, c.ch), -1)
    end
    if redis.call('ZCARD', base .. 'q:' .. c.q) == 0 then
      redis.call('SREM', base .. 'queues', c.q)
    end
  end
end

-- Back in its queue, keeping its place: the time it first began waiting for an agent.
-- Returns the queue, the priority and that time.
local function back_in_place(c, conv)
  local queue = c.q or 'default'
  local priority = int(c.pr)
  local at = int(c.qt)
  if at <= 0 then
    at = now
  end
  enqueue(c, conv, queue, priority, at)
  return queue, priority, at
end

-- A rejected or expired offer: the agent's slot is freed and the conversation goes back
-- to its queue with its place (the time it first began waiting), its overflow re-armed,
-- remembering who declined it. Returns the agent, the queue and the priority.
local function decline(c, conv)
  local id, la = c.ag, c.la
  release(c, conv)
  -- The last agent stays whoever last served it (for sticky routing after a close).
  c.la = la
  local list = {}
  for x in string.gmatch(c.dc or '', '[^,]+') do
    if x ~= id then
      list[#list + 1] = x
    end
  end
  list[#list + 1] = id
  while #list > DECLINED_KEPT do
    table.remove(list, 1)
  end
  c.dc = table.concat(list, ',')
  local queue, priority, at = back_in_place(c, conv)
  if c.fbq ~= nil and int(c.ov) > 0 then
    c.od = string.format('%d', math.max(at + int(c.ov), now))
    redis.call('ZADD', base .. 'timers', c.od, conv)
  end
  return id, queue, priority
end

local function close_conv(c, conv)
  untouch(c, conv)
  c.st = 'closed'
  c.cl = now_text
  c.q = nil
  c.ag = nil
end

-- Writes back what the call changed in agents, counters, the idle index and decisions.
-- Returns the agents version before and after the call, and what changed in the agents'
-- loads: per agent id, load, last assignment, n, n pairs channel/load.
local function flush()
  local deltas = {}
  for id, a in pairs(ctx.agents) do
    if a.dirty then
      deltas[#deltas + 1] = id
      deltas[#deltas + 1] = a.l
      deltas[#deltas + 1] = a.last or ''
      local n = 0
      for _ in pairs(a.lc) do
        n = n + 1
      end
      deltas[#deltas + 1] = n
      for ch, v in pairs(a.lc) do
        deltas[#deltas + 1] = ch
        deltas[#deltas + 1] = v
      end
      local w = {'l', a.l}
      for ch, v in pairs(a.lc) do
        w[#w + 1] = 'l:' .. ch
        w[#w + 1] = v
      end
      if a.last then
        w[#w + 1] = 'last'
        w[#w + 1] = a.last
      end
      redis.call('HSET', akey(id), unpack(w))
    end
    local add, rem = {}, {}
    for conv in pairs(a.add) do
      add[#add + 1] = conv
    end
    for conv in pairs(a.rem) do
      rem[#rem + 1] = conv
    end
    if #add > 0 then
      redis.call('SADD', base .. 'o:' .. id, unpack(add))
    end
    if #rem > 0 then
      redis.call('SREM', base .. 'o:' .. id, unpack(rem))
    end
  end
  for key in pairs(ctx.dirty_counters) do
    local v = ctx.counters[key]
    if v > 0 then
      redis.call('SET', key, v)
    else
      redis.call('DEL', key)
    end
  end
  local add = {}
  for conv in pairs(ctx.idle_add) do
    add[#add + 1] = now
    add[#add + 1] = conv
  end
  if #add > 0 then
    redis.call('ZADD', base .. 'idle', unpack(add))
  end
  local rem = {}
  for conv in pairs(ctx.idle_rem) do
    rem[#rem + 1] = conv
  end
  if #rem > 0 then
    redis.call('ZREM', base .. 'idle', unpack(rem))
  end
  local before = int(redis.call('GET', base .. 'av'))
  local after = before
  if #deltas > 0 or ctx.agents_changed then
    after = redis.call('INCR', base .. 'av')
  end
  return before, after, deltas
end

-- Operations --------------------------------------------------------------------------

-- A decision that changes nothing (kept, waiting, an offer pending): neither recorded nor
-- remembered (deciding it again gives the conversation's state at that time, and leaves
-- room in the decisions kept for those that changed something). When nothing but the last
-- message time changed, only its bytes are rewritten.
local function unchanged(res, c, conv, eid, a)
  local json = compact(a)
  local b = BOOK[c]
  if b.dirty or not b.hdr then
    save(conv, c)
  elseif b.lm_changed then
    redis.call('SETRANGE', ckey(conv), 1, lm_header(c.lm))
  end
  out(res, a, json, false)
end

local function route_one(it, res, excluded)
  local conv = it.conv
  local eid = nz(it.event_id)
  local c = load(conv)
  if eid then
    local stored = stored_decision(c, eid)
    if stored then
      out_stored(res, stored)
      return
    end
  end
  if c.ch == nil then
    BOOK[c].meta = it.meta
  end
  if c.ch ~= it.channel then
    BOOK[c].dirty = true
  end
  c.ch = it.channel
  local message = it.mode == 'message'
  if message then
    c.lm = now_text
    BOOK[c].lm_changed = true
  end
  touch(c, conv, message)
  local freed, previous = false, nil
  if c.st == 'offered' and it.mode ~= 'transfer' then
    local a = {
      action = 'offered', agent = c.ag, team = c.tm, queue = c.q, rule = c.ru,
      strategy = c.sg or '', why = 'pending', ms = math.max(int(c.ox) - now, 0), ox = c.ox,
      priority = c.pr or '0', seq = c.seq or '0',
    }
    unchanged(res, c, conv, eid, a)
    return
  end
  if c.st == 'open' or c.st == 'offered' then
    local owner = c.ag or ''
    local keep
    if it.mode == 'message' then
      keep = owner_available(owner)
    else
      keep = it.mode == 'reopen'
    end
    if keep then
      local a = {
        action = 'kept', agent = owner, team = c.tm, queue = c.q, rule = c.ru,
        strategy = c.sg or '', why = 'kept', priority = c.pr or '0', seq = c.seq or '0',
      }
      unchanged(res, c, conv, eid, a)
      return
    end
    previous = release(c, conv)
    freed = true
  elseif c.st == 'queued' and it.mode ~= 'transfer' then
    local q = c.q or ''
    local a = {
      action = 'waiting', team = c.tm, queue = q, rule = c.ru, strategy = c.sg or '',
      why = 'waiting', ms = math.max(now - int(c.qt), 0),
      queued = true, priority = c.pr or '0', seq = c.seq or '0',
    }
    unchanged(res, c, conv, eid, a)
    return
  elseif c.st == 'queued' then
    unqueue(c, conv)
  end

  -- Routed afresh: it begins waiting for an agent now.
  c.qt = now_text
  local prefix = it.reason
  if previous ~= nil and message then
    prefix = 'owner ' .. previous .. ' is offline; ' .. it.reason
  end
  local a = {
    previous_agent = previous, team = nz(it.team), queue = it.queue, rule = nz(it.rule),
    strategy = it.strategy, priority = it.priority, candidates = it.considered, queued = false,
    seq = int(c.seq),
  }
  local assigned_action = 'assigned'
  if it.mode == 'transfer' then
    assigned_action = 'transferred'
  end

  local function finish()
    if a.agent ~= nil then
      c.tm = a.team
      c.ru = nz(it.rule)
      c.tk = nz(it.target)
      c.sg = a.strategy
      c.q = it.queue
      c.pr = it.priority_text
      c.dc = nil
    end
    if a.action == 'offered' then
      -- Declined, it waits in the queue: with the fallback the rule states.
      c.fbq, c.fbt, c.fbs, c.ov = nil, nil, nil, nil
      if nz(it.fallback) and it.overflow > 0 then
        c.fbq = it.fallback
        c.fbt = nz(it.fallback_team)
        c.fbs = nz(it.fallback_strategy)
        c.ov = string.format('%d', it.overflow)
      end
    end
    local json = record(c, conv, eid, a, not message)
    remember(c, eid, freed, json)
    save(conv, c)
    out(res, a, json, freed)
  end

  -- Sticky: back to the last agent within the window.
  local la = c.la
  if it.sticky and la ~= nil and not excluded[la] and it.mode ~= 'transfer' and sticky_window > 0
      and int(c.cl) > 0 and now - int(c.cl) <= sticky_window then
    local load_, cap = check(la, c.ch)
    if load_ then
      local l = assign(c, conv, la)
      a.action = assigned_action
      a.agent = la
      a.team = team_of(la, it.team)
      a.strategy = 'sticky_owner'
      a.why, a.load, a.cap = 'sticky', l, cap
      if it.offer_ms > 0 then
        a.text = 'sticky: back to last agent ' .. la
        make_offer(c, conv, a, it.offer_ms, it.offer_max)
      end
      finish()
      return
    end
  end

  -- Fairness: nobody jumps a queue that is already waiting for this target.
  local waiting = counter(qc(it.queue, c.ch))
  if waiting == 0 then
    for _, cand in ipairs(it.candidates) do
      local load_, cap = check(cand, c.ch)
      if load_ then
        local l = assign(c, conv, cand)
        a.action = assigned_action
        a.agent = cand
        a.why, a.text, a.load, a.cap = 'assigned', prefix, l, cap
        if it.offer_ms > 0 then
          make_offer(c, conv, a, it.offer_ms, it.offer_max)
        end
        finish()
        return
      end
    end
  end

  local total = counter(base .. 'nq')
  if total >= max_queued then
    a.action = 'unrouted'
    a.queue = nil
    a.why, a.text, a.n = 'unrouted', prefix, total
    if previous ~= nil then
      -- The released conversation has nowhere to wait: it is closed, not lost.
      close_conv(c, conv)
    end
    local json
    if previous ~= nil or not message then
      json = record(c, conv, eid, a, not message)
    else
      json = compact(a)
    end
    remember(c, eid, freed, json)
    save(conv, c)
    out(res, a, json, freed)
    return
  end
  enqueue(c, conv, it.queue, it.priority, now)
  c.tm = nz(it.team)
  c.ru = nz(it.rule)
  c.tk = nz(it.target)
  c.sg = it.strategy
  c.fbq, c.fbt, c.fbs, c.ov = nil, nil, nil, nil
  c.dc = nil
  if nz(it.fallback) and it.overflow > 0 then
    c.fbq = it.fallback
    c.fbt = nz(it.fallback_team)
    c.fbs = nz(it.fallback_strategy)
    c.ov = string.format('%d', it.overflow)
    c.od = string.format('%d', now + it.overflow)
    redis.call('ZADD', base .. 'timers', c.od, conv)
  end
  a.action = 'queued'
  a.queued = true
  if waiting > 0 then
    a.why, a.text, a.n = 'behind', prefix, waiting
  elseif it.considered == 0 then
    a.why, a.text = 'nocand', prefix
  else
    a.why, a.text = 'busy', prefix
  end
  finish()
end

-- Reply: {0, agents version before, after, load changes (see flush), decisions}.
-- route: ARGV[10] the agents version the engine ranked against ('' = any): when it is not
-- current, nothing is decided and the reply is {1, current version}. ARGV[11] = m, then m
-- agents not assignable now (outside working hours, removed,
-- viewers: never sticky targets); then p plans, each: mode, rule, queue, team, strategy,
-- priority, fallback queue, overflow ms, reason, target key, fallback team, fallback
-- strategy, offer timeout ms (0: assign), missed offers before away; then n items, each: event_id, conv,
-- channel, meta, plan (1-based), considered, sticky (0/1), k, k candidates.
local function op_route()
  if ARGV[10] ~= '' then
    local current = int(redis.call('GET', base .. 'av'))
    if current ~= tonumber(ARGV[10]) then
      return {1, current}
    end
  end
  local m = tonumber(ARGV[11])
  local excluded = {}
  for j = 1, m do
    excluded[ARGV[11 + j]] = true
  end
  local i = 12 + m
  local plans = {}
  for j = 1, tonumber(ARGV[i]) do
    local b = i + 1 + (j - 1) * 14
    plans[j] = {
      mode = ARGV[b], rule = ARGV[b + 1], queue = ARGV[b + 2], team = ARGV[b + 3],
      strategy = ARGV[b + 4], priority = tonumber(ARGV[b + 5]), priority_text = ARGV[b + 5],
      fallback = ARGV[b + 6],
      overflow = tonumber(ARGV[b + 7]), reason = ARGV[b + 8], target = ARGV[b + 9],
      fallback_team = ARGV[b + 10], fallback_strategy = ARGV[b + 11],
      offer_ms = tonumber(ARGV[b + 12]), offer_max = tonumber(ARGV[b + 13]),
    }
  end
  i = i + 1 + #plans * 14
  local n = tonumber(ARGV[i])
  i = i + 1
  local res = {}
  for _ = 1, n do
    local plan = plans[tonumber(ARGV[i + 4])]
    local it = setmetatable({
      event_id = ARGV[i], conv = ARGV[i + 1], channel = ARGV[i + 2], meta = ARGV[i + 3],
      considered = tonumber(ARGV[i + 5]), sticky = ARGV[i + 6] == '1', candidates = {},
    }, {__index = plan})
    local k = tonumber(ARGV[i + 7])
    for j = 1, k do
      it.candidates[j] = ARGV[i + 7 + j]
    end
    i = i + 8 + k
    route_one(it, res, excluded)
  end
  local before, after, deltas = flush()
  return {0, before, after, deltas, res}
end

-- dequeue: ARGV[10] = n, then per item: conv, queue, team, strategy, reason, considered,
-- offer timeout ms (0: assign), missed offers before away, k, k candidates. Reply: {agents
-- version before, after, load changes (see flush), per item: 0 when skipped, else 1 and the
-- decision}.
local function op_dequeue()
  local n = tonumber(ARGV[10])
  local i = 11
  local res = {}
  for _ = 1, n do
    local conv, queue, team, strategy, reason = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
    local considered = tonumber(ARGV[i + 5])
    local offer_ms, offer_max = tonumber(ARGV[i + 6]), tonumber(ARGV[i + 7])
    local k = tonumber(ARGV[i + 8])
    local cands = {}
    for j = 1, k do
      cands[j] = ARGV[i + 8 + j]
    end
    i = i + 9 + k
    local c = load(conv)
    local chosen, cap
    if c.st == 'queued' and c.q == queue then
      for _, cand in ipairs(cands) do
        local l, room = check(cand, c.ch or '')
        if l then
          chosen, cap = cand, room
          break
        end
      end
    end
    if chosen == nil then
      res[#res + 1] = 0
    else
      local queued_ms = int(c.qt)
      unqueue(c, conv)
      local l = assign(c, conv, chosen)
      local wait = math.max(now - queued_ms, 0)
      c.tm = nz(team)
      c.sg = strategy
      local a = {
        action = 'assigned', agent = chosen, team = nz(team), queue = queue, rule = c.ru,
        strategy = strategy,
        why = 'dequeued', text = reason, load = l, cap = cap,
        queued = false, waited = true, wait_ms = wait, priority = c.pr or '0', candidates = considered,
      }
      if offer_ms > 0 then
        make_offer(c, conv, a, offer_ms, offer_max)
      end
      local json = record(c, conv, nil, a, true)
      save(conv, c)
      res[#res + 1] = 1
      out(res, a, json, false)
    end
  end
  local before, after, deltas = flush()
  return {before, after, deltas, res}
end

-- transfer_agent: ARGV[10] conv, ARGV[11] agent, ARGV[12] reason.
-- Reply: {0, json, action, strategy, freed, wait} or {-1, refusal, load, cap}.
local function op_transfer_agent()
  local conv, id, reason = ARGV[10], ARGV[11], ARGV[12]
  local c = load(conv)
  if c.st ~= 'open' and c.st ~= 'queued' and c.st ~= 'offered' then
    return {-1, 'not_active', 0, 0}
  end
  local ch = c.ch or ''
  local ag = agent(id)
  local same = c.ag == id
  if not same then
    if ag.p == 'offline' or not ag.p then
      return {-1, 'offline', 0, 0}
    end
    if ag.l >= ag.cap then
      return {-1, 'full', ag.l, ag.cap}
    end
    if ag.cc[ch] ~= nil and (ag.lc[ch] or 0) >= ag.cc[ch] then
      return {-1, 'channel_full', 0, 0}
    end
  end
  local freed, previous, wait = false, nil, nil
  if same then
    previous = id
    if c.st == 'offered' then
      -- Given by hand to the agent it was offered to: theirs now.
      redis.call('ZREM', base .. 'offers', conv)
      c.ox = nil
      c.st = 'open'
    end
  elseif c.st == 'open' or c.st == 'offered' then
    previous = release(c, conv)
    freed = true
  else
    wait = math.max(now - int(c.qt), 0)
    unqueue(c, conv)
  end
  local l = ag.l
  if not same then
    l = assign(c, conv, id)
  end
  c.sg = 'manual'
  local a = {
    action = 'transferred', agent = id, previous_agent = previous, team = c.tm, queue = c.q,
    rule = c.ru, strategy = 'manual', why = 'transferred', text = reason, load = l, cap = ag.cap,
    queued = false, priority = c.pr or '0',
  }
  if wait ~= nil then
    a.waited = true
    a.wait_ms = wait
  end
  local json = record(c, conv, nil, a, true)
  save(conv, c)
  flush()
  local res = {0}
  out(res, a, json, freed)
  return res
end

local function close_one(conv, reason, res)
  local c = load(conv)
  local freed, previous = false, nil
  if c.st == 'open' or c.st == 'offered' then
    freed = true
    previous = release(c, conv)
  elseif c.st == 'queued' then
    unqueue(c, conv)
  else
    return false
  end
  close_conv(c, conv)
  local a = {
    action = 'closed', previous_agent = previous, team = c.tm, rule = c.ru,
    strategy = c.sg or '', why = 'closed', text = reason, queued = false,
  }
  local json = record(c, conv, nil, a, true)
  save(conv, c)
  if res ~= nil then
    out(res, a, json, freed)
  end
  return true
end

-- answer: ARGV[10] conv, ARGV[11] the answering agent ('' = whoever holds the offer),
-- ARGV[12] accept or reject. Reply: {0, decision, freed} or {-1, no_offer | not_yours}.
local function op_answer()
  local conv, who, accept = ARGV[10], ARGV[11], ARGV[12] == 'accept'
  local c = load(conv)
  if c.st ~= 'offered' or c.ag == nil then
    return {-1, 'no_offer'}
  end
  if who ~= '' and c.ag ~= who then
    return {-1, 'not_yours'}
  end
  local id = c.ag
  -- An answer, either way, ends a run of missed offers.
  redis.call('HDEL', akey(id), 'mo')
  local res = {0}
  if accept then
    local after = math.max(now - int(c.op), 0)
    redis.call('ZREM', base .. 'offers', conv)
    c.ox = nil
    c.st = 'open'
    c.op = now_text
    c.dc = nil
    local a = {
      action = 'accepted', agent = id, team = c.tm, queue = c.q, rule = c.ru,
      strategy = c.sg or '', why = 'accepted', ms = after, queued = false, priority = c.pr or '0',
    }
    local json = record(c, conv, nil, a, true)
    save(conv, c)
    out(res, a, json, false)
  else
    local _, queue, priority = decline(c, conv)
    local a = {
      action = 'rejected', previous_agent = id, team = c.tm, queue = queue, rule = c.ru,
      strategy = c.sg or '', why = 'rejected', queued = true, priority = priority,
    }
    local json = record(c, conv, nil, a, true)
    save(conv, c)
    out(res, a, json, true)
  end
  flush()
  return res
end

-- close: ARGV[10] conv, ARGV[11] reason. Reply: {} when not open or queued.
local function op_close()
  local res = {}
  close_one(ARGV[10], ARGV[11], res)
  flush()
  return res
end

-- erase (privacy): ARGV[10..] conversations. Each is forgotten: an open one frees its
-- agent's slot, a queued one leaves its queue; its state (parties, decisions, history), idle
-- entry and outbox entries are deleted. No assignment event (it would carry the contact).
-- Reply: {conversations, released, unqueued, outbox entries deleted}.
local function op_erase()
  local set, n, released, unqueued = {}, 0, 0, 0
  for i = 10, #ARGV do
    local conv = ARGV[i]
    set[conv] = true
    if redis.call('EXISTS', ckey(conv)) == 1 then
      local c = load(conv)
      if c.st == 'open' or c.st == 'offered' then
        if release(c, conv) ~= nil then
          released = released + 1
        end
      elseif c.st == 'queued' then
        unqueue(c, conv)
        unqueued = unqueued + 1
      end
      untouch(c, conv)
      redis.call('DEL', ckey(conv))
      n = n + 1
    end
  end
  flush()
  local ids = {}
  for _, e in ipairs(redis.call('XRANGE', base .. 'outbox', '-', '+')) do
    local f = e[2]
    for j = 1, #f - 1, 2 do
      if f[j] == 'conv' and set[f[j + 1]] then
        ids[#ids + 1] = e[1]
      end
    end
  end
  local removed = 0
  for i = 1, #ids, 1000 do
    removed = removed + redis.call('XDEL', base .. 'outbox', unpack(ids, i, math.min(i + 999, #ids)))
  end
  return {n, released, unqueued, removed}
end

-- presence: ARGV[10] agent, ARGV[11] presence. Reply: the previous presence.
local function op_presence()
  local id, presence = ARGV[10], ARGV[11]
  local previous = redis.call('HGET', akey(id), 'p') or 'offline'
  if previous ~= presence then
    redis.call('HSET', akey(id), 'p', presence, 'ps', now)
    redis.call('INCR', base .. 'av')
  end
  if presence == 'online' then
    -- Back: missed offers count again from zero.
    redis.call('HDEL', akey(id), 'mo')
  end
  if presence == 'offline' and not keep_offline then
    if previous ~= 'offline' or redis.call('ZSCORE', base .. 'grace', id) == false then
      redis.call('ZADD', base .. 'grace', now + grace_ms, id)
    end
  else
    redis.call('ZREM', base .. 'grace', id)
  end
  return previous
end

-- sweep: grace requeues, expired offers, overflows, idle closes. Reply: {requeued,
-- overflowed, closed, expired}.
local function op_sweep()
  local requeued, overflowed, closed, expired = 0, 0, 0, 0
  local due = redis.call('ZRANGEBYSCORE', base .. 'grace', '-inf', now)
  for _, id in ipairs(due) do
    redis.call('ZREM', base .. 'grace', id)
    local ag = agent(id)
    if ag.p == 'offline' and not keep_offline then
      local since = int(ag.ps)
      for _, conv in ipairs(redis.call('SORT', base .. 'o:' .. id, 'ALPHA')) do
        local c = load(conv)
        if release(c, conv) ~= nil then
          local queue, priority = back_in_place(c, conv)
          local rec = {
            action = 'requeued', previous_agent = id, team = c.tm, queue = queue, rule = c.ru,
            strategy = c.sg or '',
            why = 'requeued', ms = math.max(now - since, 0),
            queued = true, priority = priority,
          }
          record(c, conv, nil, rec, true)
          save(conv, c)
          requeued = requeued + 1
        end
      end
    end
  end
  due = redis.call('ZRANGEBYSCORE', base .. 'offers', '-inf', now)
  for _, conv in ipairs(due) do
    local c = load(conv)
    if c.st == 'offered' and c.ag ~= nil then
      local timeout = math.max(int(c.ox) - int(c.op), 0)
      local max_missed = int(c.om)
      local id, queue, priority = decline(c, conv)
      local n = redis.call('HINCRBY', akey(id), 'mo', 1)
      local ag = agent(id)
      local away = max_missed > 0 and n >= max_missed and ag.p == 'online'
      if away then
        redis.call('HSET', akey(id), 'p', 'away', 'ps', now)
        ag.p = 'away'
        ctx.agents_changed = true
      end
      local rec = {
        action = 'expired', previous_agent = id, team = c.tm, queue = queue, rule = c.ru,
        strategy = c.sg or '', why = 'expired', ms = timeout, n = n, queued = true,
        priority = priority,
      }
      if away then
        rec.from = 'away'
      end
      record(c, conv, nil, rec, true)
      save(conv, c)
      expired = expired + 1
    else
      redis.call('ZREM', base .. 'offers', conv)
    end
  end
  due = redis.call('ZRANGEBYSCORE', base .. 'timers', '-inf', now)
  for _, conv in ipairs(due) do
    redis.call('ZREM', base .. 'timers', conv)
    local c = load(conv)
    if c.st ~= nil then
      c.od = nil
      local fb = c.fbq
      c.fbq = nil
      if c.st == 'queued' and fb ~= nil then
        local from = c.q or ''
        local priority, queued_ms = int(c.pr), int(c.qt)
        unqueue(c, conv)
        enqueue(c, conv, fb, priority, queued_ms)
        -- It now waits for the fallback target (its key is its queue's name).
        c.tk = fb
        c.tm = c.fbt
        c.sg = c.fbs or c.sg
        c.fbt, c.fbs = nil, nil
        local rec = {
          action = 'overflowed', team = c.tm, queue = fb, rule = c.ru, strategy = c.sg or '',
          why = 'overflowed', ms = math.max(now - queued_ms, 0), from = from,
          queued = true, priority = priority,
        }
        record(c, conv, nil, rec, true)
        overflowed = overflowed + 1
      end
      save(conv, c)
    end
  end
  if auto_close > 0 then
    local idle = redis.call('ZRANGEBYSCORE', base .. 'idle', '-inf', now - auto_close)
    for _, conv in ipairs(idle) do
      if close_one(conv, 'no message from the contact for ' .. secs(auto_close), nil) then
        closed = closed + 1
      else
        ctx.idle_rem[conv] = true
      end
    end
  end
  flush()
  return {requeued, overflowed, closed, expired}
end

-- apply_ruleset: ARGV[10] expected version (-1: any), ARGV[11] version, ARGV[12] json,
-- ARGV[13] origin, ARGV[14] file digest, ARGV[15] n agents, then per agent: id, capacity,
-- initial presence, teams (comma-separated), m, m pairs channel/capacity. Reply: {0} or {-1, current version}.
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
  local function drop_channel_caps(key)
    for _, f in ipairs(redis.call('HKEYS', key)) do
      if string.sub(f, 1, 3) == 'cc:' then
        redis.call('HDEL', key, f)
      end
    end
  end
  for _ = 1, n do
    local id, cap, presence, teams = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
    local m = tonumber(ARGV[i + 4])
    roster[id] = true
    local key = akey(id)
    if redis.call('HEXISTS', key, 'p') == 0 then
      redis.call('HSET', key, 'p', presence, 'ps', now)
    end
    drop_channel_caps(key)
    redis.call('HSET', key, 'cap', cap, 'tms', teams)
    for j = 1, m do
      redis.call('HSET', key, 'cc:' .. ARGV[i + 3 + 2 * j], ARGV[i + 4 + 2 * j])
    end
    i = i + 5 + 2 * m
  end
  for _, old in ipairs(redis.call('SMEMBERS', base .. 'roster')) do
    if not roster[old] then
      local key = akey(old)
      redis.call('HSET', key, 'cap', 0)
      drop_channel_caps(key)
      redis.call('SREM', base .. 'roster', old)
    end
  end
  for id, _ in pairs(roster) do
    redis.call('SADD', base .. 'roster', id)
  end
  redis.call('HSET', rkey, 'version', ARGV[11], 'json', ARGV[12], 'origin', ARGV[13],
    'file_digest', ARGV[14], 'updated_ms', now)
  redis.call('INCR', base .. 'av')
  return {0}
end

-- snapshot: ARGV[10] queue head count, ARGV[11] n agents, agents..., then m convs, convs...
-- Reply: {agents: flat hashes}, {convs: packed states ('' = unknown)},
-- {heads: queue, conv, score, channel, last agent, target key, rule, declined, ...},
-- agents version.
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
    local c = load(ARGV[i])
    if c.st then
      convs[#convs + 1] = pack_state(c)
    else
      convs[#convs + 1] = ''
    end
    i = i + 1
  end
  local heads = {}
  if heads_n > 0 then
    for _, q in ipairs(redis.call('SMEMBERS', base .. 'queues')) do
      local z = redis.call('ZRANGE', base .. 'q:' .. q, 0, heads_n - 1, 'WITHSCORES')
      for j = 1, #z, 2 do
        local c = load(z[j])
        heads[#heads + 1] = q
        heads[#heads + 1] = z[j]
        heads[#heads + 1] = z[j + 1]
        heads[#heads + 1] = c.ch or ''
        heads[#heads + 1] = c.la or ''
        heads[#heads + 1] = c.tk or ''
        heads[#heads + 1] = c.ru or ''
        heads[#heads + 1] = c.dc or ''
      end
    end
  end
  return {agents, convs, heads, int(redis.call('GET', base .. 'av'))}
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
      for _, conv in ipairs(redis.call('ZRANGE', key, 0, -1)) do
        local qt = int(load(conv).qt)
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

-- conversation: ARGV[10] conv. Reply: {packed state or '', history...}
local function op_conversation()
  local conv = ARGV[10]
  local c = load(conv)
  local state = ''
  if c.st then
    state = pack_state(c)
  end
  local history = {}
  for e in string.gmatch(BOOK[c].hist, '[^' .. US .. ']+') do
    history[#history + 1] = e
  end
  return {state, history}
end

-- open_of: ARGV[10] agent. Reply: conv, packed state, meta ... for each open conversation.
local function op_open_of()
  local res = {}
  for _, conv in ipairs(redis.call('SMEMBERS', base .. 'o:' .. ARGV[10])) do
    local c = load(conv)
    if (c.st == 'open' or c.st == 'offered') and c.ag == ARGV[10] then
      res[#res + 1] = conv
      res[#res + 1] = pack_state(c)
      res[#res + 1] = BOOK[c].meta
    end
  end
  return res
end

-- queued_in: ARGV[10] queue, ARGV[11] after score ('' = from the head), ARGV[12] after conv,
-- ARGV[13] limit. Reply: conv, score, rank (0-based), packed state, meta ... in service order.
local function op_queued_in()
  local key = base .. 'q:' .. ARGV[10]
  local limit = tonumber(ARGV[13])
  local res = {}
  local z
  if ARGV[11] == '' then
    z = redis.call('ZRANGE', key, 0, limit - 1, 'WITHSCORES')
  else
    -- Members from the cursor's score on; those up to the cursor itself are skipped.
    z = redis.call('ZRANGEBYSCORE', key, ARGV[11], '+inf', 'WITHSCORES', 'LIMIT', 0, limit + 64)
  end
  local n = 0
  for j = 1, #z, 2 do
    local conv, sc = z[j], z[j + 1]
    local skip = ARGV[11] ~= '' and tonumber(sc) == tonumber(ARGV[11]) and conv <= ARGV[12]
    if not skip and n < limit then
      local c = load(conv)
      res[#res + 1] = conv
      res[#res + 1] = sc
      res[#res + 1] = redis.call('ZRANK', key, conv)
      res[#res + 1] = pack_state(c)
      res[#res + 1] = BOOK[c].meta
      n = n + 1
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
elseif op == 'answer' then
  return op_answer()
elseif op == 'erase' then
  return op_erase()
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
elseif op == 'conversation' then
  return op_conversation()
elseif op == 'open_of' then
  return op_open_of()
elseif op == 'queued_in' then
  return op_queued_in()
end
return redis.error_reply('unknown routing operation ' .. tostring(op))
