-- cancel: ARGV member, mode ('q' | 's'), tokens, requests, margin, epoch, holds_lease,
-- unbook ('1' when booked and not settled), at, n, then n windows, then n slots.
load_state()
local member, mode = ARGV[1], ARGV[2]
if not first_time('c|' .. member) then return {'dup', fmt(S.now)} end
local tokens, requests = tonumber(ARGV[3]), tonumber(ARGV[4])
local n = tonumber(ARGV[10])
local ws = parse_windows(11, n, tonumber(ARGV[5]))
if mode == 'q' then
  redis.call('ZREM', KEYS[4], member)
  redis.call('ZREM', KEYS[5], member)
elseif ARGV[8] == '1' and ARGV[6] == S.epoch then
  local slots = {}
  for i = 1, n do slots[i] = tonumber(ARGV[10 + 4 * n + i]) end
  unbook(ws, slots, tokens, requests)
  rewind_tail(ws, tonumber(ARGV[9]))
  stat('tokens_reserved', -tokens)
end
drop_ahead(member)
stat('requests_cancelled', 1)
if ARGV[7] == '1' then redis.call('ZREM', KEYS[3], member) end
save(ws)
return {'ok', fmt(S.now)}
