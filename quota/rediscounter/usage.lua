-- usage.lua: read an organization's and a key's request usage in one window,
-- and what other lease holders may have admitted that no counter shows yet.
--
-- KEYS[1] org counter   kg:{<org>}:q:org:<window>
-- KEYS[2] key counter   kg:{<org>}:q:key:<key>:<window> (unread when ARGV[3] is 0)
-- KEYS[3] holders hash  kg:{<org>}:q:lease:<window> (see lease.lua)
-- KEYS[4] key counts    kg:{<org>}:q:keys:<window>, field "<key>:<window>"
--         (KEYS[2] after "kg:{<org>}:q:key:")
-- ARGV[1] the reading holder ('' = none): its own claim and held counts are
--         left out
-- ARGV[2] the read's instant, unix ms: claims live until their deadline
-- ARGV[3] 1 = read the key
-- ARGV[4] the key's name in the holders' held counts (c:<h>, lease.lua)
--
-- Reply {org, key, pending, mine, seq}: key is its counter plus its lease
-- count plus the counts the other holders hold for it (c:<h>, live or not:
-- they were admitted); pending is the sum over the live claims of the other
-- holders of what they booked into the org counter and hold for no key
-- (u:<h> less the total of c:<h>: spent or not); mine and seq are the
-- reading holder's own claim and last settlement applied. A holder of an
-- earlier version has no c:<h>: all of its u:<h> is pending.

local org = tonumber(redis.call('GET', KEYS[1]) or '0')
local readKey = ARGV[3] == '1'
local key = 0
if readKey then
  local _, e = string.find(KEYS[2], '}:q:key:', 1, true)
  key = tonumber(redis.call('GET', KEYS[2]) or '0') + tonumber(redis.call('HGET', KEYS[4], string.sub(KEYS[2], e + 1)) or '0')
end
local needle = '\n' .. (ARGV[4] or '') .. '='
local at = tonumber(ARGV[2])
local all = redis.call('HGETALL', KEYS[3])
local units, live, held = {}, {}, {}
local mine, seq = 0, 0
for i = 1, #all, 2 do
  local f, v = all[i], all[i + 1]
  local kind, h = string.sub(f, 1, 2), string.sub(f, 3)
  if h ~= ARGV[1] then
    if kind == 'u:' then units[h] = tonumber(v) end
    if kind == 't:' and tonumber(v) > at then live[h] = true end
    if kind == 'c:' and v ~= '' then
      held[h] = tonumber(string.match(v, '^%d+')) or 0
      if readKey then
        local _, e = string.find(v, needle, 1, true)
        if e then key = key + (tonumber(string.match(v, '^%d+', e + 1)) or 0) end
      end
    end
  elseif kind == 'u:' then
    mine = tonumber(v)
  elseif kind == 's:' then
    seq = tonumber(v)
  end
end
local pending = 0
for h, u in pairs(units) do
  if live[h] then pending = pending + math.max(u - (held[h] or 0), 0) end
end
return {org, key, pending, mine, seq}
