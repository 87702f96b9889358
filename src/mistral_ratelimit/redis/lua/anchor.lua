-- anchor: ARGV member, tokens, requests, epoch, at, lag (seconds, > margin), window spec,
-- slots ("k1 k2 ..."). A granted request left ``lag`` seconds after its booked time (the
-- lag is measured on the client, a duration: it applies to ``at``, on this clock): its
-- charges move to slot(at + lag - margin) in every window, and every waiting booking is
-- re-booked behind it, in order (limiter/memory.py's anchor).
-- Reply: "moved|same|lost new_at now epoch dv [slots...]".
load_state()
local reg = registry()
local ws, margin = parse_windows(ARGV[7], reg)
if ARGV[4] ~= S.epoch then return answer('lost', 0) end
reap(reg.list, margin)
local tokens, requests = tonumber(ARGV[2]), tonumber(ARGV[3])
local new_at = tonumber(ARGV[5]) + tonumber(ARGV[6]) - margin
local slots = numbers(ARGV[8])
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
if not moved then
  save(reg.list)
  return answer('same', tonumber(ARGV[5]))
end
stat('anchored', 1)
if new_at > S.tail then S.tail = new_at end
rebook_waiting(reg, false)
save(reg.list)
return booked_reply('moved', new_at, slots)
