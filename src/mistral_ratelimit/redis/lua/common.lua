-- Shared by every script of the Redis backend; each script is this file plus its own body.
--
-- The window algorithm is the in-memory one (limiter/window.py), ported as is so both
-- backends admit the same traffic: a window of W seconds is cut into SLOTS slots of width
-- d = W / SLOTS; a charge at t sits in slot floor(t / d) and counts until
-- (slot + 1) * d + W + margin. A ring is stored as one msgpack array
-- {slot1, amount1, slot2, amount2, ...} sorted by slot, in field "w:<window id>" of the
-- state hash: constant size per limit.
--
-- KEYS[1] state hash   now, tail, pause, epoch, dv, disc, ticket, w:<id>...
-- KEYS[2] stats hash   global counters
-- KEYS[3] zset         in-flight leases: member -> lease expiry
-- KEYS[4] zset         concurrency queue: member -> arrival ticket
-- KEYS[5] zset         queue leases: member -> expiry (a dead waiter drops out)
-- KEYS[6] zset         settled members: member -> expiry (settle/cancel run at most once)
-- KEYS[7] zset         bookings still ahead of now: member -> owner's lease expiry
-- KEYS[8] hash         those bookings: member -> msgpack {tokens, requests, n, id1, per1,
--                      slot1, ..., idn, pern, slotn, at, seq, spec, gen}: so that the bookings
--                      of a process that died are given back, and so that a pause (or a
--                      waiter an anchor broke) can re-book waiting bookings, whoever owns
--                      them, in arrival order (seq breaks ties of at). This record, not the
--                      owner's copy, is the booking while it waits.
-- KEYS[9] string       (reserve, check, cancel, anchor, settle) the booking's marker,
--                      "at gen slot1 ... slotn", for MARK_TTL_MS once it is due or granted: where
--                      its charge sits when no waiting record holds it, so that a cancel, or a
--                      call retried after its reply was lost, finds it (and gives it back or
--                      answers the same once, never twice).
--
-- Every key gets its TTL from the script that writes it: each write names the key and how
-- long it must live (expire, expire_life), and done(), through which every script returns,
-- sets the TTLs. Numbers go back to the client as strings: Redis truncates Lua numbers.

local SLOTS = 100
local LONG_WINDOW = 86400
local LONG_WAIT = 60
local SLACK_MS = 60000
local DONE_TTL = 120
local MARK_TTL_MS = 10000

if redis.replicate_commands then pcall(redis.replicate_commands) end

local function fmt(x) return string.format('%.17g', x) end

local S = {ttl = {}, life = {}, horizon = 0}

-- Redis TIME (a test clock's reading, the last argument, in scripts built for tests: see
-- scripts.py), never behind the last time any script saw. Called first by every script.
local function load_state()
  local v = redis.call('HMGET', KEYS[1], 'now', 'tail', 'pause', 'epoch', 'dv', 'gen')
  local now
  if TEST_CLOCK then
    now = tonumber(table.remove(ARGV))
  else
    local t = redis.call('TIME')
    now = tonumber(t[1]) + tonumber(t[2]) / 1000000
  end
  local last = tonumber(v[1]) or 0
  if now < last then now = last end
  S.now = now
  S.tail = tonumber(v[2]) or 0
  S.pause = tonumber(v[3]) or 0
  S.epoch = v[4]
  if not S.epoch then S.epoch = fmt(now) end
  S.dv = v[5] or '0'
  -- Bumped by every anchor that moved a granted request later: bookings made against an
  -- older generation check that they still fit when their owner next asks (check.lua).
  S.gen = tonumber(v[6]) or 0
end

-- This script wrote ``key``, which must then live at least ``ms`` more (see done()).
local function expire(key, ms)
  ms = math.ceil(ms)
  if (S.ttl[key] or 0) < ms then S.ttl[key] = ms end
end

-- This script wrote ``key`` (the state or stats hash), which must live until every booking in
-- it has expired, plus SLACK: computed in done(), once the tail is final.
local function expire_life(key) S.life[key] = true end

-- Give every key this script wrote its TTL, then return ``reply``. A TTL is lengthened only
-- once it falls half a slack short (so most calls skip the PEXPIRE), and never shortened: a
-- worker with a longer window may have set more.
local function done(reply)
  local life = (math.max(S.tail, S.pause, S.now) + S.horizon - S.now) * 1000 + SLACK_MS
  for key in pairs(S.life) do expire(key, life) end
  for key, ms in pairs(S.ttl) do
    local p = redis.call('PTTL', key)
    if p == -1 or (p >= 0 and p < ms - SLACK_MS / 2) then redis.call('PEXPIRE', key, ms) end
  end
  return reply
end

local function state_incr(field)
  expire_life(KEYS[1])
  return redis.call('HINCRBY', KEYS[1], field, 1)
end

local function stat(field, x)
  if x ~= 0 then
    redis.call('HINCRBYFLOAT', KEYS[2], field, fmt(x))
    expire_life(KEYS[2])
  end
end

local function words(text)
  local out = {}
  for w in string.gmatch(text or '', '%S+') do out[#out + 1] = w end
  return out
end

local function numbers(text)
  local out = {}
  for w in string.gmatch(text or '', '%S+') do out[#out + 1] = tonumber(w) end
  return out
end

-- A window spec is one string: "margin n id amount per is_tokens id amount per ...".
--
-- Per window the state hash holds: "w:<id>" the ring (msgpack), "t:<id>" its running total,
-- "f:<id>" its oldest slot, "l:<id>" its newest slot and "a:<id>" what was added to that
-- newest slot since the ring was last written. Almost every booking lands in the newest
-- slot of a ring whose oldest slot still counts and which has room: that needs the five
-- small fields only, and the ring is unpacked (ring(w)) only when a slot starts or expires
-- or the window is full.
-- ``reg`` (optional) shares window objects by id between several specs in one script (a
-- re-booking touches every waiter's windows): each ring is read and written once.
local function parse_windows(spec, reg)
  local parsed = reg and reg.byspec[spec]
  if parsed then return parsed, parsed.margin end
  local a = words(spec)
  local margin, n = tonumber(a[1]), tonumber(a[2])
  local ws, fields, fresh = {spec = spec, margin = margin}, {}, {}
  for i = 1, n do
    local b = 3 + (i - 1) * 4
    local per, id = tonumber(a[b + 2]), a[b]
    local known = reg and reg.byid[id]
    if known then
      ws[i] = known
    else
      ws[i] = {id = id, amount = tonumber(a[b + 1]), per = per, tokens = a[b + 3] == '1',
               d = per / SLOTS, h = per + margin, dirty = false, fast = false}
      if per + margin + per / SLOTS > S.horizon then S.horizon = per + margin + per / SLOTS end
      fresh[#fresh + 1] = ws[i]
      for _, p in ipairs({'w:', 't:', 'f:', 'l:', 'a:'}) do fields[#fields + 1] = p .. id end
      if reg then
        reg.byid[id] = ws[i]
        reg.list[#reg.list + 1] = ws[i]
      end
    end
  end
  if #fresh > 0 then
    local got = redis.call('HMGET', KEYS[1], unpack(fields))
    for i, w in ipairs(fresh) do
      local o = (i - 1) * 5
      w.blob = got[o + 1]
      if w.blob then
        w.total = tonumber(got[o + 2]) or 0
        w.first = tonumber(got[o + 3])
        w.last = tonumber(got[o + 4])
        w.pending = tonumber(got[o + 5]) or 0
      else
        w.total, w.pending, w.ring = 0, 0, {}
      end
    end
  end
  if reg then reg.byspec[spec] = ws end
  return ws, margin
end

local function registry() return {byid = {}, byspec = {}, list = {}} end

local function add_to_ring(r, k, amount)
  local i = #r - 1
  while i >= 1 and r[i] > k do i = i - 2 end
  if i >= 1 and r[i] == k then
    local new = r[i + 1] + amount
    if new < 0 then new = 0 end
    r[i + 1] = new
    return
  end
  if amount > 0 then
    table.insert(r, i + 2, k)
    table.insert(r, i + 3, amount)
  end
end

-- The full ring, with what the fast path added to its newest slot folded in.
local function ring(w)
  if not w.ring then
    w.ring = cmsgpack.unpack(w.blob)
    if w.pending ~= 0 and w.last then add_to_ring(w.ring, w.last, w.pending) end
    w.pending = 0
    w.dirty = true
  end
  return w.ring
end

local function expiry(w, k) return (k + 1) * w.d + w.h end

local function prune(w, now)
  if not w.ring and (not w.first or expiry(w, w.first) > now) then return end
  local r = ring(w)
  local i, n = 1, #r
  while i < n and expiry(w, r[i]) <= now do i = i + 2 end
  if i > 1 then
    local out = {}
    for j = 1, i - 1, 2 do w.total = w.total - r[j + 1] end
    for j = i, n do out[#out + 1] = r[j] end
    w.ring = out
    if #out == 0 then w.total = 0 end  -- drop float drift once the ring is empty
    w.dirty = true
  end
end

local function used_at(w, t)
  if not w.ring and (not w.first or expiry(w, w.first) > t) then return w.total end
  local r, s = ring(w), 0
  if #r == 0 then return 0 end
  if expiry(w, r[1]) > t then return w.total end
  for i = 1, #r, 2 do
    if expiry(w, r[i]) > t then s = s + r[i + 1] end
  end
  return s
end

-- Smallest t >= t0 at which cost fits (callers check cost <= amount).
local function earliest_fit(w, t0, cost)
  local room = w.amount - cost
  local used = used_at(w, t0)
  if used <= room + 1e-9 then return t0 end
  local r = ring(w)
  for i = 1, #r, 2 do
    local exp = expiry(w, r[i])
    if exp > t0 then
      used = used - r[i + 1]
      if used <= room + 1e-9 then return exp end
    end
  end
  return t0
end

-- Add ``amount`` (negative: a refund, floored at zero per slot) to slot k; returns the
-- change actually applied. A refund on a forgotten slot does nothing.
local function add(w, k, amount)
  if not w.ring and amount > 0 and w.last == k then
    w.pending = w.pending + amount
    w.total = w.total + amount
    w.fast = true
    return amount
  end
  local r = ring(w)
  local i = #r - 1
  while i >= 1 and r[i] > k do i = i - 2 end
  if i >= 1 and r[i] == k then
    local new = r[i + 1] + amount
    if new < 0 then new = 0 end
    local applied = new - r[i + 1]
    r[i + 1] = new
    w.total = w.total + applied
    w.dirty = true
    return applied
  end
  if amount <= 0 then return 0 end
  table.insert(r, i + 2, k)
  table.insert(r, i + 3, amount)
  w.total = w.total + amount
  w.dirty = true
  return amount
end

local function has_slot(w, k)
  local r = ring(w)
  for i = #r - 1, 1, -2 do
    if r[i] == k then return true end
    if r[i] < k then return false end
  end
  return false
end

-- A window the user did not set may be smaller than one request (see limiter.py's
-- _check_fits): the charge is capped at its amount, so the request waits for it to empty.
local function cost_of(w, tokens, requests)
  local cost = requests
  if w.tokens then cost = tokens end
  return math.min(cost, w.amount)
end

-- earliest_fit for a run of bookings at non-decreasing times (a re-booking pass): ``c``
-- remembers where the ring stops counting and what it holds from there, so each ring is
-- walked once for the whole run, not once per booking. Only valid while every charge goes
-- at or after the ring's newest slot, as it does in such a run.
local function fit_from(w, c, t0, cost)
  local r = w.ring
  while c.i < #r and expiry(w, r[c.i]) <= t0 do
    c.live = c.live - r[c.i + 1]
    c.i = c.i + 2
  end
  local room, used = w.amount - cost, c.live
  if used <= room + 1e-9 then return t0 end
  for j = c.i, #r, 2 do
    used = used - r[j + 1]
    if used <= room + 1e-9 then return expiry(w, r[j]) end
  end
  return t0
end

local function cursor(cursors, w)
  local c = cursors[w]
  if not c then
    prune(w, S.now)
    ring(w)
    c = {i = 1, live = w.total}
    cursors[w] = c
  end
  return c
end

-- Book at the earliest time every window has room, never before the newest booking (FIFO
-- across every worker) nor inside a pause, nor before ``not_before`` (a re-booked waiter's
-- old time). ``cursors`` (a table) marks a run of bookings (see fit_from). Returns at, slots;
-- or nil, binding index when a long (monthly) window would make the caller wait for hours.
local function book(ws, tokens, requests, not_before, cursors)
  local now = S.now
  local t0 = math.max(now, S.tail, S.pause, not_before or 0)
  local at, binding = t0, 0
  for i, w in ipairs(ws) do
    local cost, t = cost_of(w, tokens, requests), nil
    if cursors then
      t = fit_from(w, cursor(cursors, w), t0, cost)
    else
      prune(w, now)
      t = earliest_fit(w, t0, cost)
    end
    if t > at then at, binding = t, i end
  end
  if binding > 0 and ws[binding].per >= LONG_WINDOW and at - now > LONG_WAIT then
    return nil, binding, at
  end
  local slots = {}
  for i, w in ipairs(ws) do
    local k, cost = math.floor(at / w.d), cost_of(w, tokens, requests)
    add(w, k, cost)
    if cursors then cursors[w].live = cursors[w].live + cost end
    slots[i] = k
  end
  S.tail = at
  return at, slots
end

local function unbook(ws, slots, tokens, requests)
  for i, w in ipairs(ws) do
    if slots[i] then add(w, slots[i], -cost_of(w, tokens, requests)) end
  end
end

-- After the newest booking is cancelled, FIFO only needs the tail to be no earlier than the
-- start of the newest slot still holding a charge. (Correctness never rests on the tail:
-- every booked charge counts in used_at for any earlier time.)
local function rewind_tail(ws, at)
  if at < S.tail then return end
  local newest = 0
  for _, w in ipairs(ws) do
    local r = ring(w)
    for i = #r - 1, 1, -2 do
      if r[i + 1] > 0 then
        local start = r[i] * w.d
        if start > newest then newest = start end
        break
      end
    end
  end
  S.tail = newest
end

local function trim_leases()
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', fmt(S.now))
  local dead = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', fmt(S.now), 'LIMIT', 0, 100)
  if #dead > 0 then
    redis.call('ZREM', KEYS[5], unpack(dead))
    redis.call('ZREM', KEYS[4], unpack(dead))
  end
end

-- Settle and cancel run at most once per member, even when a client retries after an
-- ambiguous failure (the reply was lost but the script ran).
local function first_time(member)
  redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', fmt(S.now))
  if redis.call('ZSCORE', KEYS[6], member) then return false end
  redis.call('ZADD', KEYS[6], fmt(S.now + DONE_TTL), member)
  expire(KEYS[6], DONE_TTL * 1000 + SLACK_MS)
  return true
end

local function save(ws)
  local args = {'now', fmt(S.now), 'tail', fmt(S.tail), 'pause', fmt(S.pause), 'epoch', S.epoch}
  for _, w in ipairs(ws) do
    if w.dirty then
      local r = w.ring
      if #r == 0 then w.total = 0 end
      for _, f in ipairs({{'w:', cmsgpack.pack(r)}, {'t:', fmt(w.total)},
                          {'f:', r[1] and fmt(r[1]) or ''}, {'l:', r[1] and fmt(r[#r - 1]) or ''}, {'a:', '0'}}) do
        args[#args + 1] = f[1] .. w.id
        args[#args + 1] = f[2]
      end
    elseif w.fast then
      args[#args + 1] = 'a:' .. w.id
      args[#args + 1] = fmt(w.pending)
      args[#args + 1] = 't:' .. w.id
      args[#args + 1] = fmt(w.total)
    end
  end
  redis.call('HSET', KEYS[1], unpack(args))
  expire_life(KEYS[1])
end

-- A client that knew another epoch (Redis lost its state since) first charges what it
-- granted there (charge.lua), or it would book into an empty budget that the requests it
-- sent in the last window still fill at the API. The new epoch is stored at once, so that
-- every worker meets the same one.
local function epoch_changed(known)
  if known == nil or known == '' or known == S.epoch then return false end
  redis.call('HSET', KEYS[1], 'epoch', S.epoch)
  expire_life(KEYS[1])
  return true
end

-- reserve and check answer with one string: "status at now epoch dv [slots...]".
local function answer(status, at)
  return table.concat({status, fmt(at), fmt(S.now), S.epoch, S.dv}, ' ')
end

local function booked_reply(status, at, slots)
  local out = {status, fmt(at), fmt(S.now), S.epoch, S.dv}
  for i = 1, #slots do out[#out + 1] = fmt(slots[i]) end
  return table.concat(out, ' ')
end

-- Joins the concurrency queue (once); returns the member's place in it (0: next).
local function queue_up(member, qlease)
  if not redis.call('ZSCORE', KEYS[4], member) then
    redis.call('ZADD', KEYS[4], state_incr('ticket'), member)
  end
  redis.call('ZADD', KEYS[5], fmt(S.now + qlease), member)
  expire(KEYS[4], qlease * 1000 + SLACK_MS)
  expire(KEYS[5], qlease * 1000 + SLACK_MS)
  return redis.call('ZRANK', KEYS[4], member)
end

local function take_lease(member, lease)
  redis.call('ZADD', KEYS[3], fmt(S.now + lease), member)
  expire(KEYS[3], lease * 1000 + SLACK_MS)
end

-- The booking's marker (KEYS[9]): where a due or granted booking's charge sits, and the
-- generation it was checked against (as a waiting record's, see check.lua).
local function mark(at, slots)
  local out = {fmt(at), tostring(S.gen)}
  for i = 1, #slots do out[#out + 1] = fmt(slots[i]) end
  redis.call('SET', KEYS[9], table.concat(out, ' '), 'PX', MARK_TTL_MS)
end

-- What a cancel leaves in the marker: a call abandoned by its caller that reaches Redis
-- after its cancel (on another connection) must not book.
local CANCELLED = '-'

-- at, slots, gen; nil without a marker.
local function read_mark()
  local v = redis.call('GET', KEYS[9])
  if not v or v == CANCELLED then return nil end
  local n = numbers(v)
  local at, gen = table.remove(n, 1), table.remove(n, 1)
  return at, n, gen
end

-- A booking ahead of now is held for its owner by a lease the owner keeps renewing; if the
-- owner dies, reap() gives its place back (else a dead process's waiters would hold the
-- budget for as many windows as they were queued ahead).
local function ahead_blob(ws, slots, tokens, requests, at, seq, gen)
  local blob = {tokens, requests, #ws}
  for i, w in ipairs(ws) do
    blob[#blob + 1] = w.id
    blob[#blob + 1] = w.per
    blob[#blob + 1] = slots[i]
  end
  blob[#blob + 1] = at
  blob[#blob + 1] = seq
  blob[#blob + 1] = ws.spec
  blob[#blob + 1] = gen
  return cmsgpack.pack(blob)
end

-- The booking as its waiting record holds it: at, slots, seq, spec, gen (nil for a record
-- written before records carried them).
local function read_ahead(b)
  local n = b[3]
  local at, seq, spec, gen = b[3 * n + 4], b[3 * n + 5], b[3 * n + 6], b[3 * n + 7]
  if not (at and seq and spec) then return nil end
  local slots = {}
  for i = 1, n do slots[i] = b[3 * i + 3] end
  return at, slots, seq, spec, gen or 0
end

local function expire_ahead(lease)
  expire(KEYS[7], lease * 1000 + SLACK_MS)
  expire(KEYS[8], lease * 1000 + SLACK_MS)
end

-- Its waiting record is the booking from now on: a marker left from when it was due (a
-- booking moved behind a pause) would be a second, stale copy (S.unmarked: known to be none).
local function hold_ahead(member, ws, slots, tokens, requests, lease, at)
  local seq = state_incr('seq')
  redis.call('ZADD', KEYS[7], fmt(S.now + lease), member)
  redis.call('HSET', KEYS[8], member, ahead_blob(ws, slots, tokens, requests, at, seq, S.gen))
  expire_ahead(lease)
  if not S.unmarked then redis.call('DEL', KEYS[9]) end
end

local function drop_ahead(member)
  redis.call('ZREM', KEYS[7], member)
  redis.call('HDEL', KEYS[8], member)
end

-- Where ``member``'s booking is now: its waiting record, else its marker. Nil for neither.
local function find_booking(member)
  local raw = redis.call('HGET', KEYS[8], member)
  if raw then
    local at, slots = read_ahead(cmsgpack.unpack(raw))
    if at then return at, slots, true end
  end
  local at, slots = read_mark()
  return at, slots, false
end

local function reap(ws, margin)
  local dead = redis.call('ZRANGEBYSCORE', KEYS[7], '-inf', fmt(S.now), 'LIMIT', 0, 500)
  if #dead == 0 then return end
  local byid = {}
  for _, w in ipairs(ws) do byid[w.id] = w end
  local extra = {}
  for _, member in ipairs(dead) do
    local raw = redis.call('HGET', KEYS[8], member)
    if raw then
      local b = cmsgpack.unpack(raw)
      local tokens, requests, n = b[1], b[2], b[3]
      for i = 1, n do
        local id, per, slot = b[3 * i + 1], b[3 * i + 2], b[3 * i + 3]
        local w = byid[id]
        if not w then
          local got = redis.call('HMGET', KEYS[1], 'w:' .. id, 't:' .. id, 'l:' .. id,
                                 'a:' .. id)
          w = {id = id, per = per, d = per / SLOTS, h = per + margin, dirty = false,
               tokens = string.sub(id, 1, 1) == 't', blob = got[1],
               total = tonumber(got[2]) or 0, last = tonumber(got[3]),
               pending = tonumber(got[4]) or 0}
          if not got[1] then w.ring = {} end
          byid[id] = w
          extra[#extra + 1] = w
        end
        add(w, slot, -cost_of(w, tokens, requests))
      end
      stat('tokens_reserved', -tokens)
      stat('requests_reaped', 1)
    end
    drop_ahead(member)
  end
  for _, w in ipairs(extra) do
    if w.dirty then
      local r = ring(w)
      redis.call('HSET', KEYS[1], 'w:' .. w.id, cmsgpack.pack(r), 't:' .. w.id, fmt(w.total),
                 'f:' .. w.id, r[1] and fmt(r[1]) or '', 'l:' .. w.id, r[1] and fmt(r[#r - 1]) or '', 'a:' .. w.id, '0')
      expire_life(KEYS[1])
    end
  end
  S.tail = math.huge
  rewind_tail(ws, math.huge)
end

-- Book, take a lease when a cap is set, count it; returns the reply for the client.
local function book_and_reply(ws, member, tokens, requests, maxif, lease, status, count)
  local at, slots, when = book(ws, tokens, requests)
  if not at then
    save(ws)
    return answer('exhausted', when) .. ' ' .. tostring(slots)
  end
  if maxif > 0 then take_lease(member, lease) end
  if at > S.now then
    hold_ahead(member, ws, slots, tokens, requests, lease, at)
  else
    mark(at, slots)
    stat('requests_admitted', 1)
  end
  if count then stat('tokens_reserved', tokens) end
  save(ws)
  return booked_reply(status, at, slots)
end

-- Count a granted booking from ``new_at`` instead (never earlier): in every window its charge
-- leaves its slot for slot(new_at); a slot already forgotten held a charge that had expired,
-- which counts again from there, when the request really went. Waiting bookings are not
-- touched: the generation goes up, and each checks that it still fits when its owner next
-- asks (check.lua). Returns whether anything moved.
local function move_later(ws, slots, tokens, requests, new_at)
  local moved = false
  for i, w in ipairs(ws) do
    local k, nk = slots[i], math.floor(new_at / w.d)
    if k and k ~= nk then
      local cost = cost_of(w, tokens, requests)
      if has_slot(w, k) then add(w, k, -cost) end
      add(w, nk, cost)
      slots[i] = nk
      moved = true
    end
  end
  if moved then
    stat('anchored', 1)
    S.gen = state_incr('gen')
    if new_at > S.tail then S.tail = new_at end
  end
  return moved
end

-- Whether the window ending when the booking in ``slots`` goes, t = max(at, now), holds it
-- (limiter/memory.py's _still_fits): every request that can have gone by t sits in a slot no
-- later than slot(t), so the slots up to there still live at t bound what the server sees;
-- its own charge counts even if its slot expired before t (a caller late by a window).
local function still_fits(ws, slots, at, tokens, requests)
  local t = math.max(at, S.now)
  for i, w in ipairs(ws) do
    local key = slots[i]
    if key then
      local r, used, last = ring(w), 0, math.floor(t / w.d)
      for j = 1, #r, 2 do
        if r[j] > last then break end
        if expiry(w, r[j]) > t then used = used + r[j + 1] end
      end
      if expiry(w, key) <= t then used = used + cost_of(w, tokens, requests) end
      if used > w.amount + 1e-9 then return false end
    end
  end
  return true
end

-- Give back ``amounts`` (slot -> amount) from one ring in a single pass. Slots left empty
-- are dropped, so that the bookings made next are appended at the ring's end.
local function give_back(w, amounts)
  local r, out = ring(w), {}
  for i = 1, #r, 2 do
    local a, new = amounts[r[i]], r[i + 1]
    if a then
      new = new - a
      if new < 0 then new = 0 end
      w.total = w.total + new - r[i + 1]
    end
    if new > 0 then
      out[#out + 1] = r[i]
      out[#out + 1] = new
    end
  end
  w.ring, w.dirty = out, true
end

-- Re-book bookings still waiting (held ahead of now), whoever owns them, in arrival order,
-- from the first one for which starts(entry) holds (a pause: the first it caught; a waiter an
-- anchor broke, or that asked late: that waiter), with every one after it. ``extra`` is the
-- caller's own booking when no waiting record holds it (booked for "now", asked late): it
-- takes its place among them by time, and its new booking is left in extra.at_new /
-- extra.slots_new for the caller. As limiter/memory.py's _rebook_waiting, a booking never
-- moves earlier than it was: its owner may be asleep until its old time and learns the new
-- one only when it wakes (check.lua), so an earlier slot would count a request before it
-- really leaves. Linear in the number of waiting bookings: they are given back slot by slot
-- in one pass per ring, and booked again in order, each ring walked once (fit_from).
-- Returns how many moved.
local function rebook_waiting(reg, starts, extra)
  local all = redis.call('HGETALL', KEYS[8])
  local list = {}
  for i = 1, #all, 2 do
    local b = cmsgpack.unpack(all[i + 1])
    local at, slots, seq, spec = read_ahead(b)
    if at then
      list[#list + 1] = {member = all[i], tokens = b[1], requests = b[2], at = at,
                         slots = slots, seq = seq, spec = spec}
    end
  end
  if extra then list[#list + 1] = extra end
  table.sort(list, function(x, y)
    if x.at ~= y.at then return x.at < y.at end
    return x.seq < y.seq
  end)
  local first = nil
  for i, e in ipairs(list) do
    if starts(e) then first = i break end
  end
  if not first then return 0 end
  local moving, back = {}, {}
  for i = first, #list do
    local e = list[i]
    moving[#moving + 1] = e
    e.ws = parse_windows(e.spec, reg)
    for j, w in ipairs(e.ws) do
      local k = e.slots[j]
      if k then
        local m = back[w]
        if not m then m = {} back[w] = m end
        m[k] = (m[k] or 0) + cost_of(w, e.tokens, e.requests)
      end
    end
  end
  for w, m in pairs(back) do give_back(w, m) end
  rewind_tail(reg.list, math.huge)
  if first > 1 and list[first - 1].at > S.tail then S.tail = list[first - 1].at end
  local cursors, records = {}, {}
  for _, e in ipairs(moving) do
    local at, slots = book(e.ws, e.tokens, e.requests, e.at, cursors)
    if e == extra then
      extra.at_new, extra.slots_new = at, slots
    elseif at then
      records[#records + 1] = e.member
      records[#records + 1] = ahead_blob(e.ws, slots, e.tokens, e.requests, at, e.seq, S.gen)
    else
      -- A monthly budget would make it wait for hours: its owner's next delay() finds the
      -- record gone, books again and is told so (BudgetExhausted).
      drop_ahead(e.member)
      stat('tokens_reserved', -e.tokens)
    end
  end
  for i = 1, #records, 1000 do
    redis.call('HSET', KEYS[8], unpack(records, i, math.min(i + 999, #records)))
  end
  return #moving
end
