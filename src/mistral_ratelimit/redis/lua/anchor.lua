-- anchor: ARGV member, tokens, requests, epoch, due_at, at, lag (seconds), window
-- spec, slots ("k1 k2 ..."). KEYS[9]: the booking's marker. A granted request left ``lag``
-- seconds after it was due (the lag is measured on the client, a duration: it applies to
-- ``due_at``, on this clock): its charges move to slot(due_at + lag) in every window,
-- never earlier than they count now (limiter/memory.py's anchor). O(windows): waiting bookings
-- are not touched here; each one checks that it still fits when its owner next asks
-- (check.lua), as in memory.py.
-- Reply: "moved|same|lost new_at now epoch dv [slots...]".
load_state()
local reg = registry()
local ws = parse_windows(ARGV[8], reg)
if ARGV[4] ~= S.epoch then return done(answer('lost', 0)) end
local tokens, requests = tonumber(ARGV[2]), tonumber(ARGV[3])
local at, slots = read_mark()
local marked = at ~= nil
if not marked then at, slots = tonumber(ARGV[6]), numbers(ARGV[9]) end
local new_at = tonumber(ARGV[5]) + tonumber(ARGV[7])
if new_at <= at then return done(answer('same', at)) end
if move_later(ws, slots, tokens, requests, new_at) then save(reg.list) end
if marked then mark(new_at, slots) end
return done(booked_reply('moved', new_at, slots))
