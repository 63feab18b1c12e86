-- touch_keys.lua records when keys of one organization were last used,
-- never moving a time backwards and never for a key that no longer exists
-- (so a touch racing with a deletion leaves nothing behind).
--
-- KEYS[2i-1]  the record of the i-th key      kg:{org}:key:<uid>
-- KEYS[2i]    its last-used time              kg:{org}:used:<uid>
-- ARGV[i]     the i-th key's use, Unix milliseconds (decimal)
--
-- Reply (integer): how many times were moved forward.
local moved = 0
for i = 1, #ARGV do
  if redis.call('EXISTS', KEYS[2 * i - 1]) == 1 then
    local current = redis.call('GET', KEYS[2 * i])
    if not current or tonumber(ARGV[i]) > tonumber(current) then
      redis.call('SET', KEYS[2 * i], ARGV[i])
      moved = moved + 1
    end
  end
end
return moved
