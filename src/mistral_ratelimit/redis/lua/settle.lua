-- settle: ARGV member, diff (actual - estimate), margin, epoch, n, then n windows, n slots.
load_state()
local member = ARGV[1]
if not first_time('s|' .. member) then return {'dup', fmt(S.now)} end
local diff = tonumber(ARGV[2])
local n = tonumber(ARGV[5])
local ws = parse_windows(6, n, tonumber(ARGV[3]))
local lost = ARGV[4] ~= S.epoch
for i, w in ipairs(ws) do
  if w.tokens then
    local k = tonumber(ARGV[5 + 4 * n + i])
    if not lost and has_slot(w, k) then
      add(w, k, diff)
    elseif diff > 0 then
      -- The booking's slot is gone (a long stream): the debt counts from now.
      prune(w, S.now)
      add(w, math.floor(S.now / w.d), diff)
    end
  end
end
-- Counted once per reservation however many token windows it sits in (as memory.py).
if diff < 0 then stat('tokens_refunded', -diff) else stat('tokens_charged', diff) end
save(ws)
return {'ok', fmt(S.now)}
