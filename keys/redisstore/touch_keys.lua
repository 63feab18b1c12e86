-- touch_keys.lua records when keys of one organization were last used,
-- never moving a time backwards and never for a key that no longer exists
-- (so a touch racing with a deletion leaves nothing behind). Its cost is a
-- few multi-key commands per call, not per key: one EXISTS over every
-- record, one MGET of the current times and one MSET of the times that move.
-- Only when some records are missing (keys deleted since their use) does
-- EXISTS split the keys in halves to find them: at most 2·log2(n) more
-- commands per missing key.
--
-- KEYS[i]      the record of the i-th key   kg:{org}:key:<uid>
-- KEYS[n+i]    its last-used time           kg:{org}:used:<uid>
-- ARGV[i]      the i-th key's use, Unix milliseconds (decimal)
--
-- The times keep the form every earlier version wrote and reads (one string
-- per key), so sidecars of both versions record uses side by side.
--
-- Reply (integer): how many times were moved forward.
local n = #ARGV
if n == 0 then
  return 0
end
local live = {}

-- mark sets live[i] for the keys lo..hi whose record exists.
local function mark(lo, hi)
  local found = redis.call('EXISTS', unpack(KEYS, lo, hi))
  if found == hi - lo + 1 then
    for i = lo, hi do live[i] = true end
  elseif found > 0 then
    local mid = math.floor((lo + hi) / 2)
    mark(lo, mid)
    mark(mid + 1, hi)
  end
end

mark(1, n)
local current = redis.call('MGET', unpack(KEYS, n + 1, 2 * n))
local set, moved = {}, 0
for i = 1, n do
  if live[i] and (not current[i] or tonumber(ARGV[i]) > tonumber(current[i])) then
    set[#set + 1] = KEYS[n + i]
    set[#set + 1] = ARGV[i]
    moved = moved + 1
  end
end
if moved > 0 then
  redis.call('MSET', unpack(set))
end
return moved
