-- cancel: ARGV member, mode ('q' queued | 's' booked | 'u' unknown: a reserve whose reply never
-- came), tokens, requests, epoch, unbook ('1' when booked and not settled), at, window spec,
-- slots ("k1 k2 ..."), held_ahead ('1' | '0'). KEYS[9]: the booking's marker.
-- The booking is where find_booking says: its waiting record (a pause or an anchor may have
-- moved it since its owner last asked), else its marker (due or granted, maybe by a call
-- whose reply never reached the owner). Neither, for a booking its owner held for now: the
-- owner's slots (its marker expired). Neither, for one its owner thought waiting: reaped or
-- dropped, already given back.
load_state()
local member, mode = ARGV[1], ARGV[2]
if not first_time('c|' .. member) then return done({'dup', fmt(S.now)}) end
local tokens, requests = tonumber(ARGV[3]), tonumber(ARGV[4])
local ws = parse_windows(ARGV[8])
redis.call('ZREM', KEYS[4], member)
redis.call('ZREM', KEYS[5], member)
if ARGV[6] == '1' and (ARGV[5] == S.epoch or mode ~= 's') then
  local at, slots = find_booking(member)
  if not at and mode == 's' and ARGV[10] ~= '1' then
    at, slots = tonumber(ARGV[7]), numbers(ARGV[9])
  end
  if at then
    unbook(ws, slots, tokens, requests)
    rewind_tail(ws, at)
    stat('tokens_reserved', -tokens)
  end
end
drop_ahead(member)
redis.call('SET', KEYS[9], CANCELLED, 'PX', MARK_TTL_MS)
-- Its in-flight lease, if it took one (a booking promoted or made by a lost reply too).
redis.call('ZREM', KEYS[3], member)
stat('requests_cancelled', 1)
save(ws)
return done({'ok', fmt(S.now)})
