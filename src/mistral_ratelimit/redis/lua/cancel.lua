-- cancel: ARGV member, mode ('q' | 's'), tokens, requests, epoch, holds_lease, unbook ('1'
-- when booked and not settled), at, window spec, slots ("k1 k2 ..."), held_ahead ('1' | '0').
load_state()
local member, mode = ARGV[1], ARGV[2]
if not first_time('c|' .. member) then return {'dup', fmt(S.now)} end
local tokens, requests = tonumber(ARGV[3]), tonumber(ARGV[4])
local ws = parse_windows(ARGV[9])
if mode == 'q' then
  redis.call('ZREM', KEYS[4], member)
  redis.call('ZREM', KEYS[5], member)
elseif ARGV[7] == '1' and ARGV[5] == S.epoch then
  local at, slots = tonumber(ARGV[8]), numbers(ARGV[10])
  local booked = true
  if ARGV[11] == '1' then
    -- Still waiting: its record is the booking (a pause or an anchor may have moved it
    -- since its owner last asked). No record: reaped or dropped, already given back.
    local raw = redis.call('HGET', KEYS[8], member)
    if raw then
      local rat, rslots = read_ahead(cmsgpack.unpack(raw))
      if rat then at, slots = rat, rslots end
    else
      booked = false
    end
  end
  if booked then
    unbook(ws, slots, tokens, requests)
    rewind_tail(ws, at)
    stat('tokens_reserved', -tokens)
  end
end
drop_ahead(member)
stat('requests_cancelled', 1)
if ARGV[6] == '1' then redis.call('ZREM', KEYS[3], member) end
save(ws)
return {'ok', fmt(S.now)}
