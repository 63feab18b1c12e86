-- lease.lua: one call of a lease holder (a sidecar) for one organization and
-- window: settle what it owes (per-key counts, unspent units) and reserve a
-- new block of the organization's quota, atomically.
--
-- KEYS[1] org counter   kg:{<org>}:q:org:<window>
-- KEYS[2] holders hash  kg:{<org>}:q:lease:<window>: per holder h,
--         u:<h> units booked into KEYS[1] not yet attributed to a key nor
--         returned; t:<h> the claim's deadline, unix ms; s:<h> the last
--         settlement applied; a:<h> its unspent units as of its last call
--         (an upper bound: it spends them without calling); r: the instant,
--         unix ms, until which a refused reservation asks holders to give
--         back what they hold unspent; k:<h> what its key blocks hold
--         unspent (keylease.lua); c:<h> its held counts: requests of keys
--         it admitted and has not folded into KEYS[3] yet, as "<total>\n"
--         then "<key>=<n>\n" per key (rediscounter.encodeHeld; '' or absent
--         = none); d:<h> '1' when another holder adopted its held counts
--         (below) and it has not acknowledged that yet. u:<h> counts its held
--         counts too (they are booked into KEYS[1], not yet into KEYS[3])
-- KEYS[3] key counts    kg:{<org>}:q:keys:<window>: field = "<key>:<window>"
--         (a key's counter name after "kg:{<org>}:q:key:"), value = its
--         requests counted from lease blocks
-- KEYS[4] held since    kg:{<org>}:q:held:<window>, a sorted set: the holders
--         with held counts, scored by when those began (unix ms)
--
-- ARGV[1]  holder id
-- ARGV[2]  the call's instant, unix ms (the script never reads the clock)
-- ARGV[3]  how long the claim stays live after this call, ms
-- ARGV[4]  counters' expire-at, unix seconds, 0 = never
-- ARGV[5]  settlement sequence number, 0 = no settlement
-- ARGV[6]  settlement: unspent units given back to KEYS[1], >= 0
-- ARGV[7]  reserve: the fewest units that help, 0 = no reserve
-- ARGV[8]  reserve: the units wanted, >= ARGV[7]
-- ARGV[9]  org max, -1 = unlimited
-- ARGV[10] share: a grant is at most 1/share of the free units (>= 1) ...
-- ARGV[11] ... or what requests waiting for this block need, if more (they
--          spend it at once)
-- ARGV[12] the holder's unspent units when it sent the call (after what
--          ARGV[6] gives back, before the grant), stored as a:<h> with the grant
-- ARGV[13] a refused reserve marks r: for this long, ms
-- ARGV[14] settlement: the holder's held counts, all of them, replacing
--          c:<h> ('-' = unchanged, '' = emptied: they are folded by this
--          settlement, into the ARGV pairs below)
-- ARGV[15] 1 = these held counts are the first since the holder's last fold
-- ARGV[16] 1 = the holder acknowledges that its held counts were adopted
-- ARGV[17] adopt after, ms: a fold adopts the held counts of up to two
--          holders whose claim ended that long ago (they are dead)
-- ARGV[18+2(i-1)], ARGV[19+2(i-1)], i = 1..n: settlement: a key's field
--          and the requests of that key to book under it (0 = only read it)
--
-- Reply {status, org counter after (-1 when the call neither reserved nor
-- returned, so did not read it), grant, dup, then each key's count after,
-- then others, then r:}: status 1, or -1 when the reserve was refused (fewer
-- free units than ARGV[7]; the settlement is applied all the same); dup 1
-- when settlement ARGV[5] was applied before (a retry): it is not applied
-- twice. others (refused only, else 0) is what the other live holders may
-- hold unspent: their a: (or u: for a holder whose script predates a:) and
-- their key blocks' k:. r: is
-- the contention mark after the call (0 = none), on the callers' clock.
-- Status -2, and the reply {-2, -1, 0, 0}: the holder's held counts were
-- adopted and this settlement, which would book them again, does not
-- acknowledge it: nothing is applied nor reserved.
--
-- Holders running the previous version of this script (ARGV[12] was the
-- first key field) write neither a: nor r: and ignore both; their claim u:
-- stands in for their unspent units.
--
-- Replacing c:<h> costs one field however many keys it names, and changes
-- no key's usage (the counts are in u:<h> already); folding books them into
-- KEYS[3] and takes them out of u:<h>. A holder that died with held counts
-- (kill -9) leaves them in c:<h>, where readers keep counting them; the
-- next fold of another holder after ARGV[17] folds them for it (adopts
-- them), so dead holders' held counts do not pile up. Should that holder be
-- alive after all (cut off from Redis that long), d:<h> makes its next
-- settlement fail with -2 until it acknowledges (ARGV[16]) having dropped
-- what it had stored: nothing is booked twice.
--
-- A settlement is applied once, in the order of its sequence numbers, so a
-- retried call never books a key's requests twice nor gives units back twice.
-- Units go back only to the counter of the window they were taken from (the
-- KEYS name it) and only to a counter that still exists, never below zero. A
-- grant is booked into KEYS[1] at once: a block lost with its holder counts
-- as used, never as free.

local h = ARGV[1]
local fu, ft, fs = 'u:' .. h, 't:' .. h, 's:' .. h
local at, hold, expireAt = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local seq, ret = tonumber(ARGV[5]), tonumber(ARGV[6])
local need, want, orgMax, share = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local waiting = tonumber(ARGV[11])
local avail, markFor = tonumber(ARGV[12]), tonumber(ARGV[13])
local held = ARGV[14]
local first, ack, adoptAfter = ARGV[15] == '1', ARGV[16] == '1', tonumber(ARGV[17])
local n = (#ARGV - 17) / 2
local fa = 'a:' .. h
local window = string.sub(KEYS[3], select(2, string.find(KEYS[3], '}:q:keys:', 1, true)) + 1)

local mine = redis.call('HMGET', KEYS[2], fu, ft, fs, fa, 'r:', 'd:' .. h)
local units = tonumber(mine[1] or '0')
local dup = 0
if seq > 0 and tonumber(mine[3] or '0') >= seq then
  dup = 1
  ret = 0
end

if dup == 0 and mine[6] == '1' and not ack and (held ~= '-' or n > 0) then
  return {-2, -1, 0, 0}
end

-- adopt books the held counts of dead holder d into KEYS[3].
local function adopt(d)
  local st = redis.call('HMGET', KEYS[2], 't:' .. d, 'c:' .. d, 'u:' .. d)
  if tonumber(st[1] or '0') + adoptAfter > at then
    -- Alive after all, or not dead long: look again later.
    redis.call('ZADD', KEYS[4], at, d)
    return
  end
  local v = st[2] or ''
  local fields, counts, total = {}, {}, 0
  for name, c in string.gmatch(v, '\n([^\n=]*)=(%d+)') do
    name = string.gsub(name, '%%(%x%x)', function(x) return string.char(tonumber(x, 16)) end)
    fields[#fields + 1] = name .. ':' .. window
    counts[#counts + 1] = tonumber(c)
    total = total + tonumber(c)
  end
  if #fields > 0 then
    local cur = redis.call('HMGET', KEYS[3], unpack(fields))
    local set = {}
    for i = 1, #fields do
      set[2 * i - 1], set[2 * i] = fields[i], tonumber(cur[i] or '0') + counts[i]
    end
    if redis.call('HSET', KEYS[3], unpack(set)) > 0 and expireAt > 0 then
      redis.call('EXPIREAT', KEYS[3], expireAt)
    end
  end
  redis.call('HSET', KEYS[2], 'c:' .. d, '', 'd:' .. d, '1',
    'u:' .. d, string.format('%d', math.max(tonumber(st[3] or '0') - total, 0)))
  redis.call('ZREM', KEYS[4], d)
end

local vals = {}
if n > 0 then
  local fields = {}
  for i = 1, n do fields[i] = ARGV[16 + 2 * i] end
  local cur = redis.call('HMGET', KEYS[3], unpack(fields))
  local set = {}
  for i = 1, n do
    local v = tonumber(cur[i] or '0')
    local c = tonumber(ARGV[17 + 2 * i])
    if seq > 0 and dup == 0 and c > 0 then
      v = v + c
      units = units - c
      set[#set + 1] = fields[i]
      -- A number: Redis writes an integer below 2^53 exactly, and faster
      -- than string.format would.
      set[#set + 1] = v
    end
    vals[i] = v
  end
  if #set > 0 then
    -- A hash HSET adds fields to may be new: give it its expiry.
    if redis.call('HSET', KEYS[3], unpack(set)) > 0 and expireAt > 0 then
      redis.call('EXPIREAT', KEYS[3], expireAt)
    end
  end
end

local status, grant = 1, 0
local after = -1 -- the org counter after the call; -1: not read
-- grantOf is the block granted of the org's quota at counter value used.
local function grantOf(used)
  if orgMax < 0 then return want end
  local free = orgMax - used
  if free < need then
    status = -1
    return 0
  end
  return math.min(want, math.max(need, math.floor(free / share), math.min(free, waiting)))
end
if need > 0 and ret == 0 then
  -- A renewal (the common call): the block wanted is booked at once and the
  -- counter read from INCRBY's reply, one command instead of GET and
  -- INCRBY; the part not granted (near the end of the quota, or all of it
  -- when refused) goes back in the same step, so no other call sees it.
  after = redis.call('INCRBY', KEYS[1], want)
  local org = after - want
  grant = grantOf(org)
  if grant ~= want then after = redis.call('INCRBY', KEYS[1], grant - want) end
  if org == 0 then
    if after == 0 then
      -- Refused at zero: no counter is left behind (one at zero counts
      -- as none for every reader).
      redis.call('DEL', KEYS[1])
    elseif expireAt > 0 then
      -- Created by this call (or at zero, when it has its expiry already).
      redis.call('EXPIREAT', KEYS[1], expireAt)
    end
  end
else
  local org = nil
  if ret > 0 or need > 0 then
    org = tonumber(redis.call('GET', KEYS[1]) or nil)
  end
  if ret > 0 then
    units = units - ret
    if org == nil then ret = 0 else ret = math.min(ret, org) end
  end
  if need > 0 then
    grant = grantOf((org or 0) - ret)
  end
  if org ~= nil or ret > 0 or need > 0 then after = org or 0 end
  if grant - ret ~= 0 then
    after = redis.call('INCRBY', KEYS[1], grant - ret)
    if org == nil and expireAt > 0 then redis.call('EXPIREAT', KEYS[1], expireAt) end
  end
end

units = math.max(units + grant, 0)
local set = {}
if grant > 0 or (seq > 0 and dup == 0) then
  set = {fu, string.format('%d', units)}
  if seq > 0 and dup == 0 then
    set[3], set[4] = fs, string.format('%d', seq)
    if held ~= '-' then
      set[#set + 1], set[#set + 2] = 'c:' .. h, held
    end
    if ack then
      set[#set + 1], set[#set + 2] = 'd:' .. h, ''
    end
  end
end
local a = math.max(avail + grant, 0)
if tonumber(mine[4] or '-1') ~= a then
  set[#set + 1], set[#set + 2] = fa, string.format('%d', a)
end
local mark = tonumber(mine[5] or '0')
if status == -1 then
  mark = math.max(mark, at + markFor)
  set[#set + 1], set[#set + 2] = 'r:', string.format('%d', mark)
end
if #set > 0 then
  set[#set + 1], set[#set + 2] = ft, string.format('%d', at + hold)
  redis.call('HSET', KEYS[2], unpack(set))
  if not mine[2] and expireAt > 0 then redis.call('EXPIREAT', KEYS[2], expireAt) end
end

if seq > 0 and dup == 0 then
  if held == '' then
    redis.call('ZREM', KEYS[4], h)
    local old = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', at - adoptAfter, 'LIMIT', 0, 2)
    for _, d in ipairs(old) do adopt(d) end
  elseif held ~= '-' and first then
    if redis.call('ZADD', KEYS[4], at, h) > 0 and expireAt > 0 then
      redis.call('EXPIREAT', KEYS[4], expireAt)
    end
  end
end

-- What the other live holders may hold unspent: a refused caller waits
-- for it instead of refusing (quota/lease).
local others = 0
if status == -1 then
  local all = redis.call('HGETALL', KEYS[2])
  local u, av, kb, live = {}, {}, {}, {}
  for i = 1, #all, 2 do
    local f, v = all[i], all[i + 1]
    local kind, o = string.sub(f, 1, 2), string.sub(f, 3)
    if o ~= h then
      if kind == 'u:' then u[o] = tonumber(v) end
      if kind == 'a:' then av[o] = tonumber(v) end
      if kind == 'k:' then kb[o] = tonumber(v) end
      if kind == 't:' and tonumber(v) > at then live[o] = true end
    end
  end
  for o in pairs(live) do
    others = others + math.max(av[o] or u[o] or 0, 0) + math.max(kb[o] or 0, 0)
  end
end

local r = {status, after, grant, dup}
for i = 1, n do r[4 + i] = vals[i] end
r[5 + n], r[6 + n] = others, mark
return r
