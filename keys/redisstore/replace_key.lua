-- replace_key.lua replaces a key record only if it is still the one the
-- caller read (compare-and-set), so a concurrent change is never lost.
--
-- KEYS[1]  the key's record             kg:{org}:key:<uid>
-- ARGV[1]  the record as read (JSON)
-- ARGV[2]  the new record (JSON)
--
-- Reply (integer):
--   1  replaced
--   0  the record is gone
--  -3  the record changed since it was read
local current = redis.call('GET', KEYS[1])
if not current then
  return 0
end
if current ~= ARGV[1] then
  return -3
end
redis.call('SET', KEYS[1], ARGV[2])
return 1
