-- keylease.lua: one call of a lease holder (a sidecar) for one key with a
-- max of its own, in one window: give back unspent units of the key's block
-- and reserve a new block from both the key's and the organization's
-- quota, atomically.
--
-- KEYS[1] org counter   kg:{<org>}:q:org:<window>
-- KEYS[2] key counter   kg:{<org>}:q:key:<key>:<window>
-- KEYS[3] key counts    kg:{<org>}:q:keys:<window> (lease.lua): the key's
--         requests admitted from org blocks while it had no max; read only
-- KEYS[4] org holders   kg:{<org>}:q:lease:<window> (lease.lua): t:<h> the
--         holder's claim deadline; k:<h> the units its key blocks of the
--         organization hold unspent, summed; r: the organization's
--         contention mark
-- KEYS[5] key holders   kg:{<org>}:q:kl:<key>:<window>: per holder h, a:<h>
--         its block's unspent units as of its last call, c:<h> the units it
--         gave back in all (so a resent return is applied once); r: the
--         key's contention mark
--
-- ARGV[1]  holder id
-- ARGV[2]  the call's instant, unix ms (the script never reads the clock)
-- ARGV[3]  how long the claim stays live after this call, ms
-- ARGV[4]  counters' expire-at, unix seconds, 0 = never
-- ARGV[5]  the units this holder gave back of this key's blocks in this
--          window, in all (cumulative: only the part above c:<h> is applied)
-- ARGV[6]  reserve: the fewest units that help, 0 = no reserve
-- ARGV[7]  reserve: the units wanted, >= ARGV[6]
-- ARGV[8]  key max, >= 0
-- ARGV[9]  org max, -1 = unlimited
-- ARGV[10] share: a grant is at most 1/share of the free units ...
-- ARGV[11] ... or what requests waiting for this block need, if more
-- ARGV[12] the holder's unspent units of this block when it sent the call
--          (after ARGV[5], before the grant)
-- ARGV[13] a refused reserve marks r: for this long, ms
--
-- Reply {status, org counter after, key usage after (its counter plus its
-- count in KEYS[3]), grant, others, mark, c:<h> after}: status 1; 0 when the
-- key's free units (max minus usage) are fewer than ARGV[6], -1 when the
-- org's are (the key is checked first); nothing is reserved then. others
-- (refused only, else 0) is what the other live holders may hold unspent
-- of what refused: of the key's blocks, or of the organization's and its
-- keys' blocks. mark is the later of the key's and the org's contention
-- marks (0 = none). Units go back to the counters of the window they were
-- taken from, only to counters that exist, never below zero. A grant is
-- booked into both counters at once: a block lost with its holder counts as
-- used, never as free.

local h = ARGV[1]
local at, hold, expireAt = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local cum, need, want = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local keyMax, orgMax, share = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local waiting, avail, markFor = tonumber(ARGV[11]), tonumber(ARGV[12]), tonumber(ARGV[13])
local fa, fc, ft, fk = 'a:' .. h, 'c:' .. h, 't:' .. h, 'k:' .. h

local mine = redis.call('HMGET', KEYS[5], fa, fc, 'r:')
local orgSide = redis.call('HMGET', KEYS[4], ft, 'r:')
local prevA = tonumber(mine[1] or '0')
local done = tonumber(mine[2] or '0')

local org = tonumber(redis.call('GET', KEYS[1]) or nil)
local key = tonumber(redis.call('GET', KEYS[2]) or nil)
local ret = math.max(cum - done, 0)
if ret > 0 then
  if org == nil or key == nil then ret = 0 else ret = math.min(ret, org, key) end
  if ret > 0 then
    org = redis.call('DECRBY', KEYS[1], ret)
    key = redis.call('DECRBY', KEYS[2], ret)
  end
end
local _, e = string.find(KEYS[2], '}:q:key:', 1, true)
local leased = tonumber(redis.call('HGET', KEYS[3], string.sub(KEYS[2], e + 1)) or '0')

local status, grant = 1, 0
if need > 0 then
  local kfree = keyMax - (key or 0) - leased
  local free = kfree
  if orgMax >= 0 then free = math.min(free, orgMax - (org or 0)) end
  if kfree < need then
    status = 0
  elseif free < need then
    status = -1
  else
    grant = math.min(want, math.max(need, math.floor(free / share), math.min(free, waiting)))
  end
end
if grant > 0 then
  org = redis.call('INCRBY', KEYS[1], grant)
  key = redis.call('INCRBY', KEYS[2], grant)
  -- A counter INCRBY just created holds the grant; one that holds it
  -- otherwise has its expiry already, set again to the same instant.
  if expireAt > 0 then
    if org == grant then redis.call('EXPIREAT', KEYS[1], expireAt) end
    if key == grant then redis.call('EXPIREAT', KEYS[2], expireAt) end
  end
end

local a = math.max(avail + grant, 0)
local set = {}
if a ~= prevA or not mine[1] then set[1], set[2] = fa, string.format('%d', a) end
if cum > done then
  done = cum
  set[#set + 1], set[#set + 2] = fc, string.format('%d', done)
end
local keyMark = tonumber(mine[3] or '0')
local orgMark = tonumber(orgSide[2] or '0')
if status == 0 then
  keyMark = math.max(keyMark, at + markFor)
  set[#set + 1], set[#set + 2] = 'r:', string.format('%d', keyMark)
end
if #set > 0 then
  if redis.call('HSET', KEYS[5], unpack(set)) > 0 and expireAt > 0 then
    redis.call('EXPIREAT', KEYS[5], expireAt)
  end
end

local oset = {ft, string.format('%d', at + hold)}
if status == -1 then
  orgMark = math.max(orgMark, at + markFor)
  oset[3], oset[4] = 'r:', string.format('%d', orgMark)
end
redis.call('HSET', KEYS[4], unpack(oset))
if a ~= prevA then redis.call('HINCRBY', KEYS[4], fk, a - prevA) end
if not orgSide[1] and expireAt > 0 then redis.call('EXPIREAT', KEYS[4], expireAt) end

-- What the other live holders may hold unspent of what refused.
local others = 0
if status ~= 1 then
  local all = redis.call('HGETALL', status == 0 and KEYS[5] or KEYS[4])
  local held = {}
  for i = 1, #all, 2 do
    local f, v = all[i], all[i + 1]
    local kind, o = string.sub(f, 1, 2), string.sub(f, 3)
    if o ~= h and o ~= '' then
      local s = held[o] or {}
      s[kind] = tonumber(v)
      held[o] = s
    end
  end
  local live = {}
  if status == 0 then
    for o in pairs(held) do
      local t = tonumber(redis.call('HGET', KEYS[4], 't:' .. o) or '0')
      if t > at then live[o] = true end
    end
  else
    for o, s in pairs(held) do
      if (s['t:'] or 0) > at then live[o] = true end
    end
  end
  for o, s in pairs(held) do
    if live[o] then
      if status == 0 then
        others = others + math.max(s['a:'] or 0, 0)
      else
        others = others + math.max(s['a:'] or s['u:'] or 0, 0) + math.max(s['k:'] or 0, 0)
      end
    end
  end
end

return {status, org or 0, (key or 0) + leased, grant, others, math.max(keyMark, orgMark), done}
