-- pause: ARGV seconds (already clamped), rate_limited ('1' | '0').
load_state()
local stop = S.now + tonumber(ARGV[1])
if stop > S.pause then S.pause = stop end
if ARGV[2] == '1' then stat('rate_limited_seen', 1) end
save({})
return {fmt(S.pause), fmt(S.now)}
