-- update_key.lua replaces a key record with a changed one, and its per-key
-- maximum under the allocation rule of create_key.lua when that changes. Go
-- reads the record, builds the new one and passes both; the script replaces
-- the record only if it is still the one Go read (compare-and-set), so a
-- concurrent change is never lost. A refusal writes nothing.
--
-- KEYS[1]  names hash, name -> uid      kg:{org}:keynames
-- KEYS[2]  allocation hash, uid -> max  kg:{org}:alloc
-- KEYS[3]  the key's record             kg:{org}:key:<uid>
-- ARGV[1]  key name
-- ARGV[2]  key uid
-- ARGV[3]  the record as read (JSON)
-- ARGV[4]  the new record (JSON)
-- ARGV[5]  the new per-key maximum (decimal), "" for none, or "=" to leave
--          the maximum and the allocation as they are
-- ARGV[6]  allocation limit (decimal); negative means no check
--
-- Reply (integer):
--   1  updated
--   0  the name no longer names that key, or the key is gone
--  -2  the per-key maxima would exceed the allocation limit
--  -3  the record changed since it was read
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then
  return 0
end
local current = redis.call('GET', KEYS[3])
if not current then
  return 0
end
if current ~= ARGV[3] then
  return -3
end
if ARGV[5] == '=' then
  -- the maximum does not change
elseif ARGV[5] ~= '' then
  local limit = tonumber(ARGV[6])
  if limit >= 0 then
    local sum = tonumber(ARGV[5])
    local all = redis.call('HGETALL', KEYS[2])
    for i = 1, #all, 2 do
      if all[i] ~= ARGV[2] then
        sum = sum + tonumber(all[i + 1])
      end
    end
    if sum > limit then
      return -2
    end
  end
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[5])
else
  redis.call('HDEL', KEYS[2], ARGV[2])
end
redis.call('SET', KEYS[3], ARGV[4])
return 1
