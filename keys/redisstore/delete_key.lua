-- delete_key.lua removes a key from its organization: its record, its name,
-- its share of the allocation and its last-used time, in one atomic step
-- (touch_keys.lua relies on a time never outliving its record).
--
-- KEYS[1]  names hash, name -> uid      kg:{org}:keynames
-- KEYS[2]  allocation hash, uid -> max  kg:{org}:alloc
-- KEYS[3]  the key's record             kg:{org}:key:<uid>
-- KEYS[4]  the key's last-used time     kg:{org}:used:<uid>
-- ARGV[1]  key name
-- ARGV[2]  key uid
--
-- Reply: the deleted record (JSON of keys.Key), or nil when the name no longer
-- names that key (it was deleted meanwhile) or the record is gone.
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then
  return false
end
local record = redis.call('GET', KEYS[3])
redis.call('DEL', KEYS[3], KEYS[4])
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[2])
return record
