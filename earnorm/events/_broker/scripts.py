"""The queue's Lua scripts: each one atomic step of a message's life, on one queue's keys
(one hash slot on a cluster). ``broker`` registers and calls them.

Scripts whose writes do not grow memory carry Redis 7's ``allow-oom`` flag (see ``broker``);
``for_server`` drops the flag line for a Redis older than 7.
"""

from __future__ import annotations

_ALLOW_OOM = "#!lua flags=allow-oom\n"
_NOW_MS = """
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# Diverting a message larger than ARGV[4] bytes into the failed store, inside Redis, so that it
# never reaches a client: a small JSON record (size, preview, SHA-1), the message itself kept
# aside in a one-element list Q:aside:<job id>, its id added to the set Q:aside (so requeueing
# it is a native RPOPLPUSH, and a purge finds it). Expects KEYS[5..8] = failed, failed index,
# the aside set, stats.
_DIVERT = _NOW_MS + """
local max_bytes = tonumber(ARGV[4])
local diverted, diverted_ids = 0, {}
local function ascii(s) return (string.gsub(s, '[^\\32-\\126]', '?')) end
local work = 0  -- bytes this call moved or diverted: what its time grows with
local function divert(v, deliveries, died)
  work = work + #v
  local sha = redis.sha1hex(v)
  local id, task = nil, nil
  local h = string.find(v, '"headers"', 1, true)
  if h then
    local head = string.sub(v, h, h + 8192)
    id = string.match(head, '"id"%s*:%s*"([^"\\\\]+)"')
    task = string.match(head, '"task"%s*:%s*"([^"\\\\]+)"')
  end
  local job = id and ascii(id) or ('too-large-' .. sha)
  local record = '{"job_id":' .. cjson.encode(job)
    .. ',"reason":"too_large","detail":' .. cjson.encode('message of ' .. #v
      .. ' bytes exceeds max_message_bytes (' .. max_bytes .. '); kept aside, not fetched')
    .. ',"name":' .. (task and cjson.encode(ascii(task)) or 'null')
    .. ',"data":null,"metadata":{},"attempts":0,"first_failed_at":null,"last_failed_at":null'
    .. ',"failed_at_ms":' .. now .. ',"handlers":[],"errors":[],"error_type":null'
    .. ',"error":' .. cjson.encode('too large: ' .. #v .. ' bytes') .. ',"traceback":null'
    .. ',"size":' .. #v .. ',"sha1":"' .. sha .. '","preview":'
    .. cjson.encode(ascii(string.sub(v, 1, 200)))
    .. ',"deliveries":' .. deliveries .. ',"died_holding":' .. died .. '}'
  redis.call('HSET', KEYS[5], job, record)
  redis.call('ZADD', KEYS[6], now, job)
  local aside = KEYS[7] .. ':' .. job
  redis.call('DEL', aside)
  redis.call('RPUSH', aside, v)
  redis.call('SADD', KEYS[7], job)
  redis.call('HINCRBY', KEYS[8], 'failed', 1)
  diverted = diverted + 1
  if id then diverted_ids[#diverted_ids + 1] = job end
end
"""

# Publishing at most once per key: KEYS dedup key, ready list, delayed set; ARGV job id, TTL ms,
# envelope, due ms ('' for now), ready index. Returns the first publish's job id if the key is
# set (and writes nothing), else nil. Due now or in the past (an outbox entry relayed late):
# straight to the ready list, by Redis's clock.
PUSH_ONCE = """
local first = redis.call('GET', KEYS[1])
if first then return first end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local due = tonumber(ARGV[4])
if due then
""" + _NOW_MS + """
  if due > now then
    redis.call('ZADD', KEYS[3], due, ARGV[5] .. ':' .. ARGV[3])
    return false
  end
end
redis.call('LPUSH', KEYS[2], ARGV[3])
return false
"""

# Debouncing by key: KEYS the debounce key (Q:debounce:<key>), the delayed set; ARGV the delayed
# member, the quiet period (ms), HELD_MARK, the large message's own key ('' = none: PERSISTed,
# it was written first with a TTL). The previous publish of the key, if it has not run yet, is
# taken out of the delayed set (and its own key unlinked, for a large one): of a burst, only the
# last one runs, the quiet period after it. Returns 1 if it replaced one, else 0.
DEBOUNCE = _NOW_MS + """
local replaced = 0
local previous = redis.call('GET', KEYS[1])
if previous and redis.call('ZREM', KEYS[2], previous) == 1 then
  replaced = 1
  local body = string.sub(previous, (string.find(previous, ':', 1, true) or 0) + 1)
  if string.sub(body, 1, #ARGV[3]) == ARGV[3] then
    redis.call('UNLINK', string.sub(body, #ARGV[3] + 1))
  end
end
local quiet = tonumber(ARGV[2])
redis.call('ZADD', KEYS[2], now + quiet, ARGV[1])
redis.call('SET', KEYS[1], ARGV[1], 'PX', quiet + 60000)
if ARGV[4] ~= '' then redis.call('PERSIST', ARGV[4]) end
return replaced
"""

# KEYS: inflight, landing, recovered, deliveries, failed, failed index, aside set, stats,
#       probe (a scratch list), ready lists in serving order.
# ARGV: max count, first field number, may take a message alone (0/1), max message bytes,
#       deliveries from which a recovered message runs alone, max bytes for this call,
#       held-key prefix (+ field), HELD_MARK, large (bytes), probe window (messages), bytes
#       the probes may copy in this call (then it stops, after one message at least), the
#       largest estimate that is held rather than measured (over it, surely too large).
# Returns {messages, recovered info {index, deliveries, ids}..., 1 if the one message is to
#          run alone else 0, recovered still waiting, diverted, ids of those diverted that
#          named one (a Celery client may wait on them), held {index, size}..., 1 if every
#          list was read to its end (nothing left ready) else 0}; or -1 if
#          the first field is in use (this call was sent before: its reply was lost).
#
# A message's bytes cost ~6 ms a MB once they enter Lua (the reply is built by growing one
# buffer, then copied into Lua; HSET and the script's reply copy them again), so a message is
# sized before it is read: SORT ... BY nosort LIMIT ... STORE copies the next ``window``
# messages of a list into the probe list natively (~0.6 ms a MB) and MEMORY USAGE weighs them
# (an allocator's size: at most ~25% over). Up to ``large`` bytes they are popped into Lua as
# before. A heavier window is probed again one message at a time; a message over ``large`` (and
# within max_bytes) never enters Lua: the list's tail is dropped with LTRIM and the probe list
# is renamed to Q:held:<consumer>:<field> (the in-flight field gets HELD_MARK); the consumer
# reads it with a plain LINDEX and acks it with UNLINK. So the script's time is bounded by the
# bytes its probes copy natively (ARGV[11]), whatever the messages weigh. The estimate may be
# over max_bytes for a message within it, so one up to ARGV[12] (max_bytes plus the estimate's
# error) is held too, and the consumer, which reads its exact length, sets aside one that is
# over (``FailedStore.set_aside``: a RENAME). Only a message surely too large is read into
# Lua, to find the job id in its headers, and diverted: the one case whose cost still grows
# with the message, for messages of more than 1.25 x max_message_bytes (docs/latency.md).
#
# Messages are taken until the count or the byte cap is reached (the one that crosses the cap
# is kept, so at least one always moves): the cap bounds how much the consumer holds.
# The landing list goes first: it holds what the blocking wait already moved to us. Recovered
# messages come next, before any ready list. One held at fewer than ARGV[5] deaths is taken
# like any other (a crash's in-flight messages come back fast, in parallel). One held at more
# is taken alone, only into an empty buffer (ARGV[3] = 1), and nothing is taken while it waits
# at the head: so a message that kills its consumer again takes no unstarted message's count
# up with it, and an innocent message stays well below max_deliveries. A recovered entry
# naming a parked key (a large message) is renamed into our held key, unread.
FETCH = _ALLOW_OOM + _DIVERT + """
local want = tonumber(ARGV[1])
local seq = tonumber(ARGV[2])
local alone_at = tonumber(ARGV[5])
local cap = tonumber(ARGV[6])
local held_prefix, mark = ARGV[7], ARGV[8]
local large, window, probe_cap = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local hold_max = tonumber(ARGV[12])
local probe = KEYS[9]
-- Sent again with the same fields (a client's retry after a lost reply, when the first run
-- went through): writing them again would overwrite the messages it moved. Say so instead.
if redis.call('HEXISTS', KEYS[1], seq + 1) == 1 then return -1 end
local out, fields, infos, held = {}, {}, {}, {}
local probed = 0  -- bytes the probes copied: their time
local function full()
  return #out >= want or ((#out > 0 or diverted > 0) and (work >= cap or probed >= probe_cap))
end
local function keep(v)
  if #v > max_bytes then divert(v, 1, '[]'); return false end
  work = work + #v
  out[#out + 1] = v
  fields[#fields + 1] = seq + #out
  fields[#fields + 1] = v
  return true
end
local function hold(from, size)  -- the message stays in a key of its own, unread
  local field = seq + #out + 1
  redis.call('RENAME', from, held_prefix .. field)
  work = work + size
  out[#out + 1] = ''
  fields[#fields + 1] = field
  fields[#fields + 1] = mark
  held[#held + 1] = {#out, size}
end
local function weigh(list, from, k)
  redis.call('SORT', list, 'BY', 'nosort', 'LIMIT', from, k, 'STORE', probe)
  local size = redis.call('MEMORY', 'USAGE', probe, 'SAMPLES', '0')
  probed = probed + size
  return size
end
local function take_tail(list)
  while not full() do
    local len = redis.call('LLEN', list)
    if len == 0 then return end
    local k = math.min(window, len, want - #out)
    local size = weigh(list, len - k, k)
    if k > 1 and size > large then
      k = 1
      size = weigh(list, len - 1, 1)
    end
    if k == 1 and size > large and size <= hold_max then
      redis.call('LTRIM', list, 0, -2)
      hold(probe, size)
    else
      for _, v in ipairs(redis.call('RPOP', list, k)) do keep(v) end
    end
  end
end
local function ids_json(ids)
  local list = {}
  for id in string.gmatch(ids, '[^,]+') do list[#list + 1] = id end
  return #list > 0 and cjson.encode(list) or '[]'
end
take_tail(KEYS[2])
local alone = 0
local waiting = redis.call('LLEN', KEYS[3])
while waiting > 0 and not full() do
  local m = redis.call('LPOP', KEYS[3])
  local a = string.find(m, ':', 1, true)
  local b = string.find(m, ':', a + 1, true)
  local n, ids, v = tonumber(string.sub(m, 1, a - 1)), string.sub(m, a + 1, b - 1),
    string.sub(m, b + 1)
  if n >= alone_at and (#out > 0 or ARGV[3] ~= '1') then
    redis.call('LPUSH', KEYS[3], m)  -- it waits at the head for an empty buffer
    break
  end
  waiting = waiting - 1
  local taken = false
  if string.sub(v, 1, #mark) == mark then
    local parked = string.sub(v, #mark + 1)
    if redis.call('EXISTS', parked) == 1 then
      hold(parked, redis.call('MEMORY', 'USAGE', parked, 'SAMPLES', '0'))
      taken = true
    end
  elseif #v > max_bytes then
    divert(v, n, ids_json(ids))
  else
    taken = keep(v)
  end
  if taken then
    redis.call('HSET', KEYS[4], seq + #out, n .. ':' .. ids)
    infos[#infos + 1] = {#out, n, ids}
    if n >= alone_at then alone = 1; break end
  end
end
if waiting == 0 then
  for i = 10, #KEYS do
    take_tail(KEYS[i])
    if full() then break end
  end
end
redis.call('DEL', probe)
if #out > 0 then redis.call('HSET', KEYS[1], unpack(fields)) end
-- Every list read to its end: nothing was ready when this ran, so the consumer may go
-- straight to its blocking wait instead of asking again first.
local drained = (waiting == 0 and not full()) and 1 or 0
return {out, infos, alone, waiting, diverted, diverted_ids, held, drained}
"""

# KEYS: inflight, stats, deliveries. ARGV: held-key prefix, h, then fields, the first h of them
# held in keys of their own (unlinked with their field). Counts only what it removed, so an
# ack sent twice (a lost reply) or for a message another consumer recovered meanwhile counts
# once (and a recovered large message's key, renamed away by the recovery, is left alone).
ACK = _ALLOW_OOM + """
local prefix, h = ARGV[1], tonumber(ARGV[2])
local removed = 0
for i = 3, 2 + h do
  if redis.call('HDEL', KEYS[1], ARGV[i]) == 1 then
    removed = removed + 1
    redis.call('UNLINK', prefix .. ARGV[i])
  end
end
if #ARGV > 2 + h then removed = removed + redis.call('HDEL', KEYS[1], unpack(ARGV, 3 + h)) end
if removed > 0 then redis.call('HINCRBY', KEYS[2], 'processed', removed) end
redis.call('HDEL', KEYS[3], unpack(ARGV, 3))
return removed
"""

# KEYS: inflight, deliveries, delayed, failed, failed index, stats, the aside set, then lists
#       to LPUSH to.
# ARGV: field ('' = none), delayed member ('' = none), due ms, count as a retry (0/1),
#       job id ('' = none), record, failed ms, counter to add one to ('' = none), the key
#       holding the field's large message ('' = none), the key a large retry was written to
#       by reference (made to last: PERSIST; '' = none), the key to keep the held message
#       aside in when it is dead-lettered (Q:aside:<job id>; '' = none), then one envelope per
#       list (a canvas's follow-ups: the next chain step, callbacks, errbacks).
# Only if the field is still ours: a consumer that another one declared dead and recovered must
# not also retry or dead-letter the message (the recovered copy will). A held message that is
# dead-lettered is renamed aside, never read: its record (written without the envelope) is
# small, so the script's time does not grow with the message. These writes grow memory, so the
# script is refused whole (OOM) at maxmemory: back-pressure, retried by the consumer.
SETTLE = """#!lua
if ARGV[1] ~= '' then
  -- a held key gone while the field is here: another consumer's recovery is moving it
  if ARGV[11] ~= '' and redis.call('EXISTS', ARGV[9]) == 0 then return 0 end
  if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
  redis.call('HDEL', KEYS[2], ARGV[1])
  if ARGV[11] ~= '' then
    redis.call('RENAME', ARGV[9], ARGV[11])
    redis.call('SADD', KEYS[7], ARGV[5])
  elseif ARGV[9] ~= '' then
    redis.call('UNLINK', ARGV[9])
  end
end
if ARGV[2] ~= '' then
  redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
  if ARGV[10] ~= '' then redis.call('PERSIST', ARGV[10]) end
  if ARGV[4] == '1' then redis.call('HINCRBY', KEYS[6], 'retried', 1) end
end
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[4], ARGV[5], ARGV[6])
  redis.call('ZADD', KEYS[5], ARGV[7], ARGV[5])
  redis.call('HINCRBY', KEYS[6], 'failed', 1)
end
if ARGV[8] ~= '' then redis.call('HINCRBY', KEYS[6], ARGV[8], 1) end
for i = 8, #KEYS do redis.call('LPUSH', KEYS[i], ARGV[i + 4]) end
return 1
"""

# KEYS: delayed, recovered, ready lists by index. ARGV: max count, max bytes (one member more
# at most), HELD_MARK. A member naming a key (a large message's, Q:later:<token>) is not
# pushed to a ready list: any command that moves a list element returns it, and a reply read
# into Lua costs ~6 ms a MB. The reference goes to Q:recovered instead (at 0 deliveries),
# where the fetch renames the key into its own held key, unread.
# Returns {moved, next due ms or -1, now ms}. Due messages go to the consuming (right) end so a
# backlog does not delay them further; pushed latest-first so the earliest is taken first.
# Members are read one at a time, so the byte cap bounds the script's time (and 1M events due
# at once are promoted in bounded slices).
PROMOTE = _ALLOW_OOM + _NOW_MS + """
now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000  -- to the microsecond, like due times
local limit, cap, mark = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local due, bytes = {}, 0
while #due < limit and bytes < cap do
  local next = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 1)
  if #next == 0 then break end
  redis.call('ZREM', KEYS[1], next[1])
  due[#due + 1] = next[1]
  bytes = bytes + #next[1]
end
if #due > 0 then
  for i = #due, 1, -1 do
    local m = due[i]
    local sep = string.find(m, ':', 1, true)
    local index = tonumber(string.sub(m, 1, sep - 1)) or 0
    if string.sub(m, sep + 1, sep + #mark) == mark then
      redis.call('RPUSH', KEYS[2], '0::' .. string.sub(m, sep + 1))
    else
      redis.call('RPUSH', KEYS[3 + index] or KEYS[3], string.sub(m, sep + 1))
    end
  end
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {#due, nxt[2] or '-1', string.format('%.3f', now)}
"""

# KEYS: consumers, stats. ARGV: consumer id, timeout ms.
# Returns {now ms, expired ids...}. Also dates the counters (since_ms) the first time.
HEARTBEAT = _ALLOW_OOM + _NOW_MS + """
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('HSETNX', KEYS[2], 'since_ms', now)
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - 1, 'LIMIT', 0, 16)
local out = {now}
for _, id in ipairs(dead) do out[#out + 1] = id end
return out
"""

# Handing one held message back (the field's value moves to the main ready list, or to
# Q:recovered with its delivery count), measured first with HSTRLEN so that a slice stops
# before the byte cap ``cap`` or ``most`` messages (after one message at least): a message's
# bytes pass through Lua, ~6 ms a MB here, and each message costs ~20 us besides, so a slice's
# time is bounded whatever the messages weigh. A large message held in a key of its own (its
# field has ``mark``) is renamed to a parked key, unread, and Q:recovered names that key; it
# never goes to the ready list (a Celery worker would not know the reference). Expects the
# locals inflight, ready, recovered, deliveries, cap, most, held_prefix, parked_prefix, mark.
_HAND_BACK = """
local moved, bytes = 0, 0
local function fits(f)
  local size = redis.call('HSTRLEN', inflight, f)
  if moved > 0 and (bytes + size > cap or moved >= most) then return false end
  bytes = bytes + size
  return true
end
local function hand_back(f, died)
  local v = redis.call('HGET', inflight, f)
  local info = redis.call('HGET', deliveries, f)
  local parked = v == mark
  if parked then
    v = mark .. parked_prefix .. f
    redis.call('RENAME', held_prefix .. f, parked_prefix .. f)
  end
  if died then
    local n, ids = 1, ''
    if info then
      local a = string.find(info, ':', 1, true)
      n, ids = tonumber(string.sub(info, 1, a - 1)), string.sub(info, a + 1)
    end
    if ids ~= '' then ids = ids .. ',' end
    redis.call('RPUSH', recovered, (n + 1) .. ':' .. ids .. died .. ':' .. v)
  elseif info then redis.call('RPUSH', recovered, info .. ':' .. v)
  elseif parked then redis.call('RPUSH', recovered, '1::' .. v)
  else redis.call('RPUSH', ready, v) end
  redis.call('HDEL', inflight, f)
  redis.call('HDEL', deliveries, f)
  moved = moved + 1
end
"""

# KEYS: consumers, inflight, landing, main ready list, monitor, recovered, deliveries, probe.
# ARGV: consumer id, force (0/1), byte cap for this slice, most messages in it, held-key
#       prefix, parked-key prefix, HELD_MARK, large (bytes).
# Returns {moved, 1 if more is left for another slice else 0}, or -1 if the consumer is alive.
# Hands the messages the consumer holds back, in slices of about ARGV[3] bytes, but only if it
# is still dead (or force, for a consumer returning its own work): two live consumers racing
# to recover the same one cannot both move a message. What a dead consumer held counts as one
# more delivery and goes to Q:recovered with the count and the consumers that died holding it;
# what a consumer returns itself (graceful stop) and what it had not fetched (landing) go back
# unchanged (a large one in the landing list is weighed first, as the fetch script does, and
# parked unread). The consumer's registration goes with the last slice.
RECOVER = _ALLOW_OOM + _NOW_MS + """
local force = ARGV[2] == '1'
if not force then
  local deadline = redis.call('ZSCORE', KEYS[1], ARGV[1])
  if deadline and tonumber(deadline) >= now then return -1 end
end
local inflight, ready, recovered, deliveries = KEYS[2], KEYS[4], KEYS[6], KEYS[7]
local cap, most = tonumber(ARGV[3]), tonumber(ARGV[4])
local held_prefix, parked_prefix, mark, large = ARGV[5], ARGV[6], ARGV[7], tonumber(ARGV[8])
""" + _HAND_BACK + """
local died = (not force) and ARGV[1] or nil
local fields = redis.call('HKEYS', inflight)
local more = 0
for _, f in ipairs(fields) do
  if not fits(f) then more = 1; break end
  hand_back(f, died)
end
while more == 0 do
  local len = redis.call('LLEN', KEYS[3])
  if len == 0 then break end
  if moved > 0 and (bytes >= cap or moved >= most) then more = 1; break end
  redis.call('SORT', KEYS[3], 'BY', 'nosort', 'LIMIT', len - 1, 1, 'STORE', KEYS[8])
  local size = redis.call('MEMORY', 'USAGE', KEYS[8], 'SAMPLES', '0')
  if size > large then
    redis.call('LTRIM', KEYS[3], 0, -2)
    local parked = parked_prefix .. 'landing:' .. now .. ':' .. len
    redis.call('RENAME', KEYS[8], parked)
    redis.call('RPUSH', recovered, '1::' .. mark .. parked)
  else
    redis.call('LMOVE', KEYS[3], ready, 'RIGHT', 'RIGHT')
  end
  bytes = bytes + size
  moved = moved + 1
end
redis.call('DEL', KEYS[8])
if more == 0 then
  redis.call('DEL', deliveries)
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[5], ARGV[1])
end
return {moved, more}
"""

# KEYS: inflight, main ready list, recovered, deliveries. ARGV: byte cap, most messages,
# held-key prefix, parked-key prefix, HELD_MARK, then the fields to hand back.
# Returns {fields looked at, messages handed back}; the caller sends the fields after those
# again (a slice ends before the cap, after one message at least).
RECLAIM = _ALLOW_OOM + """
local inflight, ready, recovered, deliveries = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local cap, most = tonumber(ARGV[1]), tonumber(ARGV[2])
local held_prefix, parked_prefix, mark = ARGV[3], ARGV[4], ARGV[5]
""" + _HAND_BACK + """
local seen = 0
for i = 6, #ARGV do
  local f = ARGV[i]
  if redis.call('HEXISTS', inflight, f) == 1 then
    if not fits(f) then break end
    hand_back(f, nil)
  end
  seen = seen + 1
end
return {seen, moved}
"""

# KEYS: a scratch list, then the ready lists. ARGV: the largest message read (bytes).
# For the oldest message of each list (its consuming end), the headers stats() needs for
# latency, cut out inside Redis so a huge message is never sent: {1, eta, timestamp}; {0}
# for an empty list; {2} for a message too large to read here. A message's bytes cost a
# script ~6 ms a MB, so it is first copied natively into the scratch list (SORT ... STORE, as
# the fetch script weighs) and weighed there: only a small one is read.
OLDEST = _ALLOW_OOM + """
local out = {}
local probe, most = KEYS[1], tonumber(ARGV[1])
for i = 2, #KEYS do
  local len = redis.call('LLEN', KEYS[i])
  local eta, stamp, present = '', '', 0
  if len > 0 then
    present = 2
    redis.call('SORT', KEYS[i], 'BY', 'nosort', 'LIMIT', len - 1, 1, 'STORE', probe)
    if redis.call('MEMORY', 'USAGE', probe, 'SAMPLES', '0') <= most then
      present = 1
      local v = redis.call('LINDEX', probe, 0)
      local h = v and string.find(v, '"headers"', 1, true)
      if h then
        local head = string.sub(v, h, h + 16384)
        eta = string.match(head, '"eta"%s*:%s*"([^"]*)"') or ''
        stamp = string.match(head, '"earnorm_timestamp"%s*:%s*"([^"]*)"') or ''
      end
    end
  end
  out[#out + 1] = {present, eta, stamp}
end
redis.call('DEL', probe)
return out
"""


# A rate limit's next slot (GCRA: each event reserves the next free instant, one interval
# after the previous reservation, never before now). KEYS: the rates hash. ARGV: event name,
# interval (us). Returns {the slot, now} in microseconds of Redis's clock: the caller runs the
# event at once if the slot is now, else schedules it for the slot, which stays reserved.
# KEYS: rates. ARGV: event name, interval us, how many consecutive slots (one per event).
# Returns the first slot and now (us); the others follow it an interval apart.
RATE_SLOT = _NOW_MS + """
now = tonumber(t[1]) * 1000000 + tonumber(t[2])  -- to the microsecond
local slot = math.max(now, tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0'))
local after = slot + tonumber(ARGV[2]) * tonumber(ARGV[3] or '1')
redis.call('HSET', KEYS[1], ARGV[1], string.format('%.0f', after))
return {string.format('%.0f', slot), string.format('%.0f', now)}
"""


def for_server(source: str, flags: bool) -> str:
    """Redis < 7 knows no script flags: there the shebang line is dropped (and a Redis at
    maxmemory refuses these scripts too)."""
    if flags or not source.startswith("#!"):
        return source
    return source.split("\n", 1)[1]


# Per-key concurrency (consumer._keylimits). A lease set holds the handlers running for one
# key: ``c:<consumer>:<field>`` (alive while that consumer's heartbeat deadline is ahead) and
# ``r:<job id>`` (a slot kept for a waiter just released, until its score). Dropping the dead
# ones first is what frees the keys of a consumer killed while it held them. Expects
# KEYS[1] = the lease set, KEYS[4] = the consumers zset, and ``now``.
_LIVE_LEASES = _NOW_MS + """
local function live_leases()
  local entries = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
  for i = 1, #entries, 2 do
    local m, score = entries[i], tonumber(entries[i + 1])
    local dead
    if string.sub(m, 1, 2) == 'r:' then
      dead = score < now
    else
      local cid = string.match(m, '^c:(.*):[^:]*$')
      local deadline = cid and redis.call('ZSCORE', KEYS[4], cid)
      dead = not deadline or tonumber(deadline) < now
    end
    if dead then redis.call('ZREM', KEYS[1], m) end
  end
  return redis.call('ZCARD', KEYS[1])
end
"""

# KEYS: lease set, wait list, waiting index, consumers, inflight, deliveries.
# ARGV: lease member (c:<consumer>:<field>), max, field, job id, '' (unused: the envelope is
#       read from in-flight only when it waits), the held key ('' = not held), the parked key
#       to move it to, HELD_MARK, waiting index member.
# Returns 1: the slot is taken, run; 0: the message waits (moved out of in-flight, into the
# wait list, in the same script); -1: the field is no longer ours (recovered meanwhile).
# A message a release kept a slot for (``r:<job id>``) takes that one. A held (large) message
# waits by reference: its key is renamed, never read.
KEY_ACQUIRE = _ALLOW_OOM + _LIVE_LEASES + """
local most = tonumber(ARGV[2])
-- already ours: this call was sent again after a lost reply
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 1 end
if redis.call('ZREM', KEYS[1], 'r:' .. ARGV[4]) == 1 or live_leases() < most then
  redis.call('ZADD', KEYS[1], 0, ARGV[1])
  return 1
end
if ARGV[6] ~= '' and redis.call('EXISTS', ARGV[6]) == 0 then return -1 end
local entry = ''
if ARGV[6] == '' then  -- not held: the envelope is in the in-flight hash (small: read it)
  entry = redis.call('HGET', KEYS[5], ARGV[3])
  if not entry then return -1 end
end
if redis.call('HDEL', KEYS[5], ARGV[3]) == 0 then return -1 end
redis.call('HDEL', KEYS[6], ARGV[3])
if ARGV[6] ~= '' then
  redis.call('RENAME', ARGV[6], ARGV[7])
  entry = ARGV[8] .. ARGV[7]
end
redis.call('LPUSH', KEYS[2], #ARGV[4] .. ':' .. ARGV[4] .. entry)
redis.call('ZADD', KEYS[3], now, ARGV[9])
return 0
"""

# KEYS: lease set, wait list, waiting index, consumers, recovered, main ready list.
# ARGV: lease member to drop ('' = none: a sweep), max, how long a released waiter's slot is
#       kept (ms), waiting index member, HELD_MARK.
# Frees the member's slot, drops dead leases, and hands as many waiters as there are free
# slots (oldest first) on, each with a slot kept for it: to the consuming end of the main
# ready list, so that it runs next and an idle consumer's blocking wait wakes at once; a large
# one (a parked key's name) to Q:recovered, which every consumer serves before the ready lists.
# Returns how many it released. Bounded by ``max``.
KEY_RELEASE = _ALLOW_OOM + _LIVE_LEASES + """
if ARGV[1] ~= '' then redis.call('ZREM', KEYS[1], ARGV[1]) end
local most, keep = tonumber(ARGV[2]), tonumber(ARGV[3])
local free = most - live_leases()
local released = 0
while released < free do
  local e = redis.call('RPOP', KEYS[2])
  if not e then break end
  local colon = string.find(e, ':', 1, true)
  local n = tonumber(string.sub(e, 1, colon - 1))
  redis.call('ZADD', KEYS[1], now + keep, 'r:' .. string.sub(e, colon + 1, colon + n))
  local body = string.sub(e, colon + n + 1)
  if string.sub(body, 1, #ARGV[5]) == ARGV[5] then
    redis.call('RPUSH', KEYS[5], '0::' .. body)
  else
    redis.call('RPUSH', KEYS[6], body)
  end
  released = released + 1
end
if redis.call('LLEN', KEYS[2]) == 0 then redis.call('ZREM', KEYS[3], ARGV[4]) end
return released
"""
