-- renew in-flight leases and ahead-of-now bookings held by a live process: ARGV lease_s, members...
-- XX: a lease already released (or expired and taken by others) is not brought back.
load_state()
local lease = tonumber(ARGV[1])
local exp = fmt(S.now + lease)
local renewed = 0
for i = 2, #ARGV do
  renewed = renewed + redis.call('ZADD', KEYS[3], 'XX', 'GT', 'CH', exp, ARGV[i])
  renewed = renewed + redis.call('ZADD', KEYS[7], 'XX', 'GT', 'CH', exp, ARGV[i])
end
expire(KEYS[3], lease * 1000 + SLACK_MS)
expire_ahead(lease)
return done(renewed)
