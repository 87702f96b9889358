-- adopt: ARGV window spec, dropped windows' spec (replaced by discovery), m, m observations
-- (is_tokens, per_seconds, remaining), discovered limits as JSON ('' for none).
load_state()
local ws, margin = parse_windows(ARGV[1])
local dropped = parse_windows(ARGV[2])
if #dropped > 0 or ARGV[#ARGV] ~= '' then  -- windows replaced, or limits discovered
  local fresh = {}
  for i, w in ipairs(ws) do
    fresh[i] = redis.call('HEXISTS', KEYS[1], 'w:' .. w.id) == 0
  end
  for i, w in ipairs(ws) do
    if fresh[i] then
      -- Requests booked under a replaced tier default count in the new window too, at
      -- their slot's end: later than they went, so for at least as long. Every window of
      -- a unit holds the same bookings, so they come from one (memory.py's _carried_from):
      -- the shortest that covers the new window, else the longest.
      -- A window kept under its id (a learnt limit of the same length as the one it
      -- replaces) holds the same bookings: it is a source too.
      local sources = {}
      for _, old in ipairs(dropped) do sources[#sources + 1] = old end
      for j, kept in ipairs(ws) do
        if not fresh[j] then sources[#sources + 1] = kept end
      end
      local source = nil
      for _, old in ipairs(sources) do
        if old.tokens == w.tokens then
          local covers, best = old.per >= w.per, source and source.per >= w.per
          if not source or (covers and (not best or old.per < source.per))
              or (not covers and not best and old.per > source.per) then
            source = old
          end
        end
      end
      if source then
        local r = ring(source)
        for j = 1, #r, 2 do
          if r[j + 1] > 0 then add(w, math.floor((r[j] + 1) * source.d / w.d), r[j + 1]) end
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
