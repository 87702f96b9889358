-- check (the delay round trip): ARGV member, mode ('q' queued | 's' scheduled), tokens,
-- requests, max_inflight, lease_s, queue_lease_s, at, epoch, counted ('1' when the admission
-- was already counted), window spec, slots ("k1 k2 ..."), held_ahead ('1' | '0').
load_state()
local member, mode = ARGV[1], ARGV[2]
local tokens, requests = tonumber(ARGV[3]), tonumber(ARGV[4])
local maxif, lease, qlease = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local reg = registry()
local ws = parse_windows(ARGV[11], reg)
if mode == 'q' then
  trim_leases()
  queue_up(member, qlease)
  local free = maxif - redis.call('ZCARD', KEYS[3])
  if free > 0 and redis.call('ZRANK', KEYS[4], member) < free then
    redis.call('ZREM', KEYS[4], member)
    redis.call('ZREM', KEYS[5], member)
    return book_and_reply(ws, member, tokens, requests, maxif, lease, 'ok', true)
  end
  save(ws)
  return answer('queued', 0)
end
local at = tonumber(ARGV[8])
local slots = numbers(ARGV[12])
local lost = ARGV[9] ~= S.epoch
local relocated = false
if not lost and ARGV[13] == '1' then
  local raw = redis.call('HGET', KEYS[8], member)
  if not raw then
    -- Held ahead of now but reaped (its owner looked dead: no lease renewal for a whole
    -- lease), or dropped by a re-booking that hit a monthly budget: the booking is gone,
    -- so it books again rather than go uncounted.
    lost = true
  else
    -- A pause, or a waiter ahead of it that an anchor broke (maybe in another process),
    -- re-booked it: the record holds its booking now. It only ever moves later, so its
    -- owner, asleep until the old time, is not late for it.
    local rat, rslots, _, _, rgen = read_ahead(cmsgpack.unpack(raw))
    if rat and (rat ~= at or table.concat(rslots, ' ') ~= table.concat(slots, ' ')) then
      at, slots, relocated = rat, rslots, true
    end
    if rat and rgen ~= S.gen and S.pause <= at then
      if still_fits(ws, slots, at) then
        local b = cmsgpack.unpack(raw)
        b[3 * b[3] + 7] = S.gen
        redis.call('HSET', KEYS[8], member, cmsgpack.pack(b))
      else
        -- A request granted before it left late (anchor.lua): this booking and every one
        -- after it move back, in order.
        rebook_waiting(reg, function(e) return e.member == member end)
        local moved = redis.call('HGET', KEYS[8], member)
        if moved then
          at, slots = read_ahead(cmsgpack.unpack(moved))
          relocated = true
        else
          lost = true
        end
        save(reg.list)
      end
    end
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
  if ARGV[10] == '1' and not lost then stat('requests_admitted', -1) end
  return book_and_reply(ws, member, tokens, requests, relisted, lease, 'moved', lost)
end
if at <= S.now then
  if ARGV[10] ~= '1' then stat('requests_admitted', 1) end
  drop_ahead(member)
end
redis.call('HSET', KEYS[1], 'now', fmt(S.now))
if relocated then return booked_reply('moved', at, slots) end
return answer('ok', at)
