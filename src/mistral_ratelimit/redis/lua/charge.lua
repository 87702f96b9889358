-- charge: ARGV window spec, once ('' or a name: what is charged under a name is charged at
-- most once), then one string per window, "k1 a1 k2 a2 ..." (slot -1: now). What this process
-- granted while Redis could not count it (a local fallback), or within the last window before
-- Redis lost its state (a new epoch): charges still live at their slot count again.
-- Reply: {now, epoch}.
load_state()
local ws = parse_windows(ARGV[1])
if ARGV[2] == '' or first_time(ARGV[2]) then
  for i, w in ipairs(ws) do
    prune(w, S.now)
    local list = numbers(ARGV[2 + i])
    for j = 1, #list - 1, 2 do
      local k, amount = list[j], list[j + 1]
      if k < 0 then k = math.floor(S.now / w.d) end
      if amount > 0 and expiry(w, k) > S.now then add(w, k, amount) end
    end
  end
end
save(ws)
return done({fmt(S.now), S.epoch})
