-- charge (back from a local fallback): ARGV window spec, amounts ("a1 a2 ...") charged at now.
load_state()
local ws = parse_windows(ARGV[1])
local amounts = numbers(ARGV[2])
for i, w in ipairs(ws) do
  if amounts[i] > 0 then
    prune(w, S.now)
    add(w, math.floor(S.now / w.d), amounts[i])
  end
end
save(ws)
return {fmt(S.now)}
