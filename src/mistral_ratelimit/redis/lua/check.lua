-- check (the delay round trip): ARGV member, mode ('q' queued | 's' scheduled), tokens,
-- requests, max_inflight, lease_s, queue_lease_s, at, epoch (the booking's), counted ('1' when
-- the admission was already counted), window spec, slots ("k1 k2 ..."), held_ahead ('1' | '0'),
-- known epoch (this process's). KEYS[9]: the booking's marker.
-- Replies (see answer()): ok (go at ``at``) | granted (go now, counted at ``at`` in the slots
-- given) | moved (booked again: at, slots) | queued <rank> | exhausted | epoch.
load_state()
local member, mode = ARGV[1], ARGV[2]
local tokens, requests = tonumber(ARGV[3]), tonumber(ARGV[4])
local maxif, lease, qlease = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
if epoch_changed(ARGV[14]) then return done(answer('epoch', 0)) end
local reg = registry()
local ws, margin = parse_windows(ARGV[11], reg)
if mode == 'q' then
  -- Promoted by a call whose reply was lost: that booking (and its lease), not a second one.
  local held_at, held_slots = find_booking(member)
  if held_at then return done(booked_reply('ok', held_at, held_slots)) end
  trim_leases()
  local rank = queue_up(member, qlease)
  if maxif - redis.call('ZCARD', KEYS[3]) > rank then
    redis.call('ZREM', KEYS[4], member)
    redis.call('ZREM', KEYS[5], member)
    return done(book_and_reply(ws, member, tokens, requests, maxif, lease, 'ok', true))
  end
  save(ws)
  return done(answer('queued', rank))
end
local at = tonumber(ARGV[8])
local slots = numbers(ARGV[12])
local lost = ARGV[9] ~= S.epoch
local counted = ARGV[10] == '1'
local held, relocated, rgen = false, false, S.gen
if not lost then
  local raw = redis.call('HGET', KEYS[8], member)
  local rat, rslots, rseq, rspec, g = nil, nil, nil, nil, nil
  if raw then rat, rslots, rseq, rspec, g = read_ahead(cmsgpack.unpack(raw)) end
  if rat then
    -- Still waiting: its record is the booking. A pause, or a waiter ahead of it that an
    -- anchor broke (maybe in another process), may have re-booked it; it only ever moves
    -- later, so its owner, asleep until the old time, is not late for it.
    held, rgen = true, g
    if rat ~= at or table.concat(rslots, ' ') ~= table.concat(slots, ' ') then
      at, slots, relocated = rat, rslots, true
    end
  else
    local mat, mslots, mgen = read_mark()
    if mat and (ARGV[13] == '1' or mat ~= at) then
      -- Granted by an earlier call whose reply never arrived: the same answer again.
      return done(booked_reply('granted', mat, mslots))
    end
    if mat then rgen = mgen end  -- booked for "now": the generation it was booked against
    -- Held ahead of now but gone: reaped (its owner looked dead: no lease renewal for a
    -- whole lease), or dropped by a re-booking that hit a monthly budget. It books again
    -- rather than go uncounted.
    lost = ARGV[13] == '1'
  end
end
local late = S.now - at > margin
if not lost and S.pause <= at and (late or rgen ~= S.gen) then
  if not still_fits(ws, slots, at, tokens, requests) then
    -- A request granted before it left late (an anchor), or this one asks late itself: this
    -- booking and every one after it move back, in order.
    local extra = nil
    if not held then
      extra = {member = member, tokens = tokens, requests = requests, at = at, slots = slots,
               seq = -1, spec = ARGV[11]}
    end
    rebook_waiting(reg, function(e) return e.member == member end, extra)
    if extra then
      at, slots = extra.at_new, extra.slots_new
      if at and at > S.now then
        hold_ahead(member, ws, slots, tokens, requests, lease, at)
        if counted then stat('requests_admitted', -1) end
      end
    else
      local moved = redis.call('HGET', KEYS[8], member)
      at, slots = nil, nil
      if moved then at, slots = read_ahead(cmsgpack.unpack(moved)) end
    end
    save(reg.list)
    if not at then lost = true else relocated, late = true, false end
  elseif held and at > S.now then
    local b = cmsgpack.unpack(redis.call('HGET', KEYS[8], member))
    b[3 * b[3] + 7] = S.gen
    redis.call('HSET', KEYS[8], member, cmsgpack.pack(b))
    expire_ahead(lease)
  end
end
if lost or S.pause > at then
  -- A pause (a 429 somewhere) arrived after this booking, or Redis lost its state: book
  -- again behind it, or the request would count at a time the server's window was full.
  drop_ahead(member)
  if not lost then unbook(ws, slots, tokens, requests) end
  local relisted = 0
  if lost then relisted = maxif end
  -- Counted as admitted when it was booked for "now"; it is not any more.
  if counted and not lost then stat('requests_admitted', -1) end
  return done(book_and_reply(ws, member, tokens, requests, relisted, lease, 'moved', lost))
end
if at <= S.now then
  if not counted then stat('requests_admitted', 1) end
  drop_ahead(member)
  if late then
    -- It goes now, not when it was due: it counts from now, as an anchor would count it
    -- once it has left (so callers that never anchor are counted right too).
    at = S.now
    move_later(ws, slots, tokens, requests, at)
    save(reg.list)
    mark(at, slots)
    return done(booked_reply('granted', at, slots))
  end
  mark(at, slots)
end
redis.call('HSET', KEYS[1], 'now', fmt(S.now))
expire_life(KEYS[1])
if relocated then return done(booked_reply('moved', at, slots)) end
return done(answer('ok', at))
