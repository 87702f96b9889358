-- stats: no ARGV; reads only.
load_state()
local live = '(' .. fmt(S.now)
local out = {fmt(S.now), fmt(S.pause), tostring(redis.call('ZCOUNT', KEYS[3], live, '+inf')),
             tostring(redis.call('ZCOUNT', KEYS[5], live, '+inf'))}
local s = redis.call('HGETALL', KEYS[2])
for i = 1, #s do out[#out + 1] = s[i] end
return done(out)
