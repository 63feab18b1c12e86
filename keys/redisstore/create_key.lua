-- create_key.lua adds a key to an organization. In one atomic step it checks
-- that the organization exists, that the name (and uid) is free and that the
-- per-key maxima of the organization stay within the allocation limit, then
-- writes the key. A refusal writes nothing.
--
-- KEYS[1]  organization record          kg:{org}:org
-- KEYS[2]  names hash, name -> uid      kg:{org}:keynames
-- KEYS[3]  allocation hash, uid -> max  kg:{org}:alloc
-- KEYS[4]  the key's record             kg:{org}:key:<uid>
-- ARGV[1]  key name
-- ARGV[2]  key uid
-- ARGV[3]  key record (JSON of keys.Key)
-- ARGV[4]  the key's per-key maximum (decimal), or "" when it has none
-- ARGV[5]  allocation limit (decimal); negative means no check
--
-- Reply (integer):
--   1  created
--   0  the organization does not exist
--  -1  the name or the uid is taken
--  -2  the per-key maxima would exceed the allocation limit
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 or redis.call('EXISTS', KEYS[4]) == 1 then
  return -1
end
if ARGV[4] ~= '' then
  local limit = tonumber(ARGV[5])
  if limit >= 0 then
    local sum = tonumber(ARGV[4])
    local maxima = redis.call('HVALS', KEYS[3])
    for i = 1, #maxima do
      sum = sum + tonumber(maxima[i])
    end
    if sum > limit then
      return -2
    end
  end
end
redis.call('SET', KEYS[4], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[3], ARGV[2], ARGV[4])
end
return 1
