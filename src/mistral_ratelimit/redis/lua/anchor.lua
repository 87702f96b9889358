-- anchor: ARGV member, tokens, requests, epoch, due_at, at, lag (seconds, > margin), window
-- spec, slots ("k1 k2 ..."). A granted request left ``lag`` seconds after it was due (the lag
-- is measured on the client, a duration: it applies to ``due_at``, on this clock): its charges
-- move to slot(due_at + lag - margin) in every window, never earlier than they count now
-- (limiter/memory.py's anchor). O(windows): waiting bookings are not touched here; each one
-- checks that it still fits when its owner next asks (check.lua), as in memory.py.
-- Reply: "moved|same|lost new_at now epoch dv [slots...]".
load_state()
local reg = registry()
local ws, margin = parse_windows(ARGV[8], reg)
if ARGV[4] ~= S.epoch then return answer('lost', 0) end
local tokens, requests = tonumber(ARGV[2]), tonumber(ARGV[3])
local at = tonumber(ARGV[6])
local new_at = tonumber(ARGV[5]) + tonumber(ARGV[7]) - margin
if new_at <= at then return answer('same', at) end
local slots = numbers(ARGV[9])
local moved = false
for i, w in ipairs(ws) do
  local k = slots[i]
  local nk = math.floor(new_at / w.d)
  if k and k ~= nk and has_slot(w, k) then
    local cost = cost_of(w, tokens, requests)
    add(w, k, -cost)
    add(w, nk, cost)
    slots[i] = nk
    moved = true
  end
end
if moved then
  stat('anchored', 1)
  S.gen = redis.call('HINCRBY', KEYS[1], 'gen', 1)
  if new_at > S.tail then S.tail = new_at end
  save(reg.list)
end
return booked_reply('moved', new_at, slots)
