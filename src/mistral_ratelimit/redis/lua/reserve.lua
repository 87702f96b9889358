-- reserve: ARGV member, tokens, requests, margin, max_inflight (0: none), lease_s,
-- queue_lease_s, n, then n windows.
load_state()
local member = ARGV[1]
local tokens, requests = tonumber(ARGV[2]), tonumber(ARGV[3])
local maxif, lease, qlease = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local ws = parse_windows(9, tonumber(ARGV[8]), tonumber(ARGV[4]))
reap(ws, tonumber(ARGV[4]))
if maxif > 0 then
  trim_leases()
  if redis.call('ZCARD', KEYS[4]) > 0 or redis.call('ZCARD', KEYS[3]) >= maxif then
    queue_up(member, qlease)
    save(ws)
    return {'queued', '0', fmt(S.now), S.epoch, S.dv}
  end
end
return book_and_reply(ws, member, tokens, requests, maxif, lease, 'ok', true)
