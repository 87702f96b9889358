-- pause: ARGV seconds (already clamped), rate_limited ('1' | '0'), window spec.
load_state()
local reg = registry()
local ws, margin = parse_windows(ARGV[3], reg)
reap(reg.list, margin)
local stop = S.now + tonumber(ARGV[1])
local moved = 0
if stop > S.pause then
  S.pause = stop
  -- Every booking made since the last pause already sits behind it: only a longer pause
  -- can catch a waiter. Re-booked now, in order, rather than each by its owner when it
  -- wakes, which would put it behind everyone who arrived meanwhile (see docs/redis.md
  -- for the cost: linear in the waiting bookings).
  moved = rebook_waiting(reg, function(e) return e.at < S.pause end)
end
if ARGV[2] == '1' then stat('rate_limited_seen', 1) end
save(reg.list)
return done({fmt(S.pause), fmt(S.now), tostring(moved)})
