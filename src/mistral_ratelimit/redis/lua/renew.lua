-- renew in-flight leases and ahead-of-now bookings held by a live process: ARGV lease_s, members...
-- XX: a lease already released (or expired and taken by others) is not brought back.
load_state()
local exp = fmt(S.now + tonumber(ARGV[1]))
local renewed = 0
for i = 2, #ARGV do
  renewed = renewed + redis.call('ZADD', KEYS[3], 'XX', 'GT', 'CH', exp, ARGV[i])
  renewed = renewed + redis.call('ZADD', KEYS[7], 'XX', 'GT', 'CH', exp, ARGV[i])
end
keep(KEYS[3], tonumber(ARGV[1]) * 1000 + SLACK_MS)
keep(KEYS[7], tonumber(ARGV[1]) * 1000 + SLACK_MS)
keep(KEYS[8], tonumber(ARGV[1]) * 1000 + SLACK_MS)
return renewed
