-- reserve: ARGV member, tokens, requests, max_inflight (0: none), lease_s, queue_lease_s,
-- window spec.
load_state()
local member = ARGV[1]
local tokens, requests = tonumber(ARGV[2]), tonumber(ARGV[3])
local maxif, lease, qlease = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local ws, margin = parse_windows(ARGV[7])
reap(ws, margin)
if maxif > 0 then
  trim_leases()
  if redis.call('ZCARD', KEYS[4]) > 0 or redis.call('ZCARD', KEYS[3]) >= maxif then
    queue_up(member, qlease)
    save(ws)
    return answer('queued', 0)
  end
end
return book_and_reply(ws, member, tokens, requests, maxif, lease, 'ok', true)
