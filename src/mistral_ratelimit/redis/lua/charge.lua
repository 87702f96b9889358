-- charge (back from a local fallback): ARGV margin, n, n windows, n amounts charged at now.
load_state()
local n = tonumber(ARGV[2])
local ws = parse_windows(3, n, tonumber(ARGV[1]))
for i, w in ipairs(ws) do
  local amount = tonumber(ARGV[2 + 4 * n + i])
  if amount > 0 then
    prune(w, S.now)
    add(w, math.floor(S.now / w.d), amount)
  end
end
save(ws)
return {fmt(S.now)}
