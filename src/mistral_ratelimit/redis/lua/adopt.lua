-- adopt: ARGV window spec, dropped windows' spec (replaced by discovery), m, m observations
-- (is_tokens, per_seconds, remaining), discovered limits as JSON ('' for none).
load_state()
local ws, margin = parse_windows(ARGV[1])
local dropped = parse_windows(ARGV[2])
if #dropped > 0 then
  local fresh = {}
  for i, w in ipairs(ws) do
    fresh[i] = redis.call('HEXISTS', KEYS[1], 'w:' .. w.id) == 0
  end
  for i, w in ipairs(ws) do
    if fresh[i] then
      -- Requests booked under a replaced tier default count in the new window too, at
      -- their slot's end: later than they went, so for at least as long (as memory.py).
      for _, old in ipairs(dropped) do
        if old.tokens == w.tokens then
          local r = ring(old)
          for j = 1, #r, 2 do
            if r[j + 1] > 0 then add(w, math.floor((r[j] + 1) * old.d / w.d), r[j + 1]) end
          end
        end
      end
    end
  end
end
local p = 3
local m = tonumber(ARGV[p])
for j = 1, m do
  local b = p + 1 + (j - 1) * 3
  local tok, per, remaining = ARGV[b] == '1', tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2])
  for _, w in ipairs(ws) do
    if w.tokens == tok and math.abs(w.per - per) <= 1e-9 * math.max(math.abs(w.per), math.abs(per)) then
      -- Never believe in more room than the server says remains.
      prune(w, S.now)
      local excess = w.amount - used_at(w, S.now) - remaining
      if excess > 0 then add(w, math.floor(S.now / w.d), excess) end
    end
  end
end
local disc = ARGV[p + 1 + 3 * m]
if disc and disc ~= '' and redis.call('HGET', KEYS[1], 'disc') ~= disc then
  redis.call('HSET', KEYS[1], 'disc', disc)
  S.dv = tostring(redis.call('HINCRBY', KEYS[1], 'dv', 1))
end
save(ws)
return done({S.dv, fmt(S.now)})
