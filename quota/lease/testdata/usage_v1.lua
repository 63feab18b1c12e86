-- usage.lua: read an organization's and a key's request usage in one window,
-- and what other lease holders may have admitted that no counter shows yet.
--
-- KEYS[1] org counter   kg:{<org>}:q:org:<window>
-- KEYS[2] key counter   kg:{<org>}:q:key:<key>:<window> (unread when ARGV[3] is 0)
-- KEYS[3] holders hash  kg:{<org>}:q:lease:<window> (see lease.lua)
-- KEYS[4] key counts    kg:{<org>}:q:keys:<window>, field "<key>:<window>"
--         (KEYS[2] after "kg:{<org>}:q:key:")
-- ARGV[1] the reading holder ('' = none): its own claim is left out
-- ARGV[2] the read's instant, unix ms: claims live until their deadline
-- ARGV[3] 1 = read the key
--
-- Reply {org, key (its counter plus its lease count), pending, mine, seq}:
-- pending is the sum of the live claims of the other holders (units booked
-- into the org counter that no key counter shows yet, spent or not); mine
-- and seq are the reading holder's own claim and last settlement applied.

local org = tonumber(redis.call('GET', KEYS[1]) or '0')
local key = 0
if ARGV[3] == '1' then
  local _, e = string.find(KEYS[2], '}:q:key:', 1, true)
  key = tonumber(redis.call('GET', KEYS[2]) or '0') + tonumber(redis.call('HGET', KEYS[4], string.sub(KEYS[2], e + 1)) or '0')
end
local pending = 0
local at = tonumber(ARGV[2])
local all = redis.call('HGETALL', KEYS[3])
local units, live = {}, {}
local mine, seq = 0, 0
for i = 1, #all, 2 do
  local f, v = all[i], all[i + 1]
  local kind, h = string.sub(f, 1, 2), string.sub(f, 3)
  if h ~= ARGV[1] then
    if kind == 'u:' then units[h] = tonumber(v) end
    if kind == 't:' and tonumber(v) > at then live[h] = true end
  elseif kind == 'u:' then
    mine = tonumber(v)
  elseif kind == 's:' then
    seq = tonumber(v)
  end
end
for h, u in pairs(units) do
  if live[h] then pending = pending + u end
end
return {org, key, pending, mine, seq}
