-- touch_keys.lua records when keys of one organization were last used,
-- never moving a time backwards and never for a key that no longer exists
-- (so a touch racing with a deletion leaves nothing behind). Its cost is a
-- few multi-key commands per call, not per key: one MGET of the current
-- times, one MSET of the times that move and, for the keys that have no time
-- yet, one EXISTS over their records. Only when some of those records are
-- missing (keys deleted since their use) does EXISTS split them in halves
-- to find which: at most 2·log2(n) more commands per missing key.
--
-- A time exists only while its key's record does: create_key.lua writes
-- none, this script writes one only beside an existing record, and
-- delete_key.lua removes both at once. So a key that has a time exists, and
-- only the others need their record checked.
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
local current = redis.call('MGET', unpack(KEYS, n + 1, 2 * n))

-- probe lists the keys without a time; live[i] is set for those whose
-- record exists.
local probe, live = {}, {}
for i = 1, n do
  if not current[i] then
    probe[#probe + 1] = i
  end
end

-- mark sets live[] for the keys probe[lo..hi] whose record exists.
local function mark(lo, hi)
  local records = {}
  for j = lo, hi do
    records[j - lo + 1] = KEYS[probe[j]]
  end
  local found = redis.call('EXISTS', unpack(records))
  if found == hi - lo + 1 then
    for j = lo, hi do live[probe[j]] = true end
  elseif found > 0 then
    local mid = math.floor((lo + hi) / 2)
    mark(lo, mid)
    mark(mid + 1, hi)
  end
end

if #probe > 0 then
  mark(1, #probe)
end
local set, moved = {}, 0
for i = 1, n do
  local later
  if current[i] then
    later = tonumber(ARGV[i]) > tonumber(current[i])
  else
    later = live[i]
  end
  if later then
    set[#set + 1] = KEYS[n + i]
    set[#set + 1] = ARGV[i]
    moved = moved + 1
  end
end
if moved > 0 then
  redis.call('MSET', unpack(set))
end
return moved
