-- reserve: ARGV member, tokens, requests, max_inflight (0: none), lease_s, queue_lease_s,
-- window spec, known epoch ('' before this process's first reply), retry ('1' after an
-- ambiguous failure of this same call). KEYS[9]: its marker.
-- Replies (see answer()): ok | queued <rank> | exhausted | epoch | cancelled.
load_state()
local member = ARGV[1]
if epoch_changed(ARGV[8]) then return done(answer('epoch', 0)) end
local marker = redis.call('GET', KEYS[9])
-- Cancelled already: this call was abandoned by its caller and arrives after the cancel.
if marker == CANCELLED then return done(answer('cancelled', 0)) end
local tokens, requests = tonumber(ARGV[2]), tonumber(ARGV[3])
local maxif, lease, qlease = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
if marker or ARGV[9] == '1' then
  -- A retry whose first reply was lost: the same booking again, never a second one.
  local held_at, held_slots = find_booking(member)
  if held_at then return done(booked_reply('ok', held_at, held_slots)) end
else
  S.unmarked = true
end
local ws, margin = parse_windows(ARGV[7])
reap(ws, margin)
if maxif > 0 then
  trim_leases()
  if redis.call('ZSCORE', KEYS[4], member) or redis.call('ZCARD', KEYS[4]) > 0
      or redis.call('ZCARD', KEYS[3]) >= maxif then
    local rank = queue_up(member, qlease)
    save(ws)
    return done(answer('queued', rank))
  end
end
return done(book_and_reply(ws, member, tokens, requests, maxif, lease, 'ok', true))
