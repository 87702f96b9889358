-- settle: ARGV member, diff (actual - estimate), epoch, window spec, slots ("k1 k2 ...").
-- KEYS[9]: the booking's marker, which holds its slots if an anchor moved it since.
load_state()
local member = ARGV[1]
if not first_time('s|' .. member) then return done({'dup', fmt(S.now)}) end
local diff = tonumber(ARGV[2])
local ws = parse_windows(ARGV[4])
local _, marked = read_mark()
local slots = marked or numbers(ARGV[5])
local lost = ARGV[3] ~= S.epoch
for i, w in ipairs(ws) do
  if w.tokens then
    local k = slots[i]
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
return done({'ok', fmt(S.now)})
