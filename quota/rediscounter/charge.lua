-- charge.lua: admit a request of cost ARGV[1] iff the key's and the org's
-- counters both stay within their max and every enforced rate limit has room
-- for it; count it in all of them, atomically.
--
-- KEYS[1] org counter  kg:{<org>}:q:org:<window>
-- KEYS[2] key counter  kg:{<org>}:q:key:<key>:<window>
-- KEYS[3] token        kg:{<org>}:tok:<token>    (untouched when ARGV[5] is 0)
-- KEYS[4] nonce        kg:{<org>}:nonce:<nonce>  (untouched when ARGV[6] is -1)
-- KEYS[5] lease counts kg:{<org>}:q:keys:<window>, a hash: the requests of each
--         key admitted from an organization's lease block (quota/lease),
--         under the field "<key>:<window>" (KEYS[2] after "kg:{<org>}:q:key:");
--         read only when the key has a max
-- KEYS[5+i], i = 1..n, rate limit i (n = #KEYS - 5, often 0):
--         kg:{<org>}:rl:org:<name> or kg:{<org>}:rl:key:<key>:<name>; its value
--         is the limit's theoretical arrival time (TAT, GCRA), unix microseconds
--
-- ARGV[1] cost, >= 0 (0 checks no limit and counts nothing)
-- ARGV[2] org max, -1 = unlimited
-- ARGV[3] key max, -1 = none
-- ARGV[4] counters' expire-at, unix seconds, 0 = never (period "none")
-- ARGV[5] token TTL, milliseconds, 0 = no token
-- ARGV[6] nonce expire-at, unix milliseconds, 0 = never, -1 = no nonce
-- ARGV[7] the charge's instant, unix milliseconds: a nonce is used while its
--         expire-at is later (0 = never expires). The script never reads the clock.
-- Only when n > 0:
-- ARGV[8]    the charge's instant, unix microseconds (the rate limits' clock)
-- ARGV[6+3i] rate limit i's interval: microseconds per unit, >= 1
-- ARGV[7+3i] rate limit i's burst: units, >= 1
-- ARGV[8+3i] 1 = shadow (evaluated and reported, never refuses), 0 = enforced
--
-- Reply {status, org used, key used}, for statuses 1 and -3 followed by two
-- integers per rate limit, in order: its debt (TAT minus the instant, µs,
-- never negative) and 1 if it would refuse this charge, else 0.
--    1 admitted: the usages after counting; each rate limit's debt after the
--      charge (a shadow limit that would refuse has not advanced)
--    0 refused by the key's max, -1 refused by the org's max (the key is
--      checked first): the usages, unchanged
--   -2 nonce already used: {-2, 0, 0}
--   -3 refused by an enforced rate limit: the usages and debts, unchanged
-- In this order: (a) a token seen before returns its stored reply unchanged,
-- writing nothing, so a retried request counts once; (b) a used nonce is a
-- replay; (c) both quotas, then the rate limits, are checked before anything
-- is incremented (a charge both a quota and a rate limit refuse is reported
-- as the quota's); (d) an admitted charge increments both counters, sets
-- their EXPIREAT, stores each advancing rate limit's TAT with a PX of its
-- debt plus a minute (an idle limit vanishes once full) and marks the nonce;
-- (e) the reply is stored under the token. A refusal writes nothing but the
-- token.
--
-- GCRA: a limit with interval I and burst B admits cost c at instant t iff
-- c <= B and max(TAT, t) + c*I - t <= B*I; then TAT = max(TAT, t) + c*I.
-- A stored TAT more than B*I ahead (left by a limit since changed) counts as
-- t + B*I, an empty bucket of the new limit, and is stored so by any charge
-- of cost > 0, admitted or refused, when it is more than B*I + 1s ahead: it
-- lowers a debt, it counts nothing.
-- Every number stays an integer below 2^53, so the doubles of Lua are exact.

local tokenTTL = tonumber(ARGV[5])
if tokenTTL > 0 then
  local prev = redis.call('GET', KEYS[3])
  if prev then
    local r = {}
    for v in string.gmatch(prev, '%S+') do
      r[#r + 1] = tonumber(v)
      if not r[#r] then
        return redis.error_reply('ERR keygate charge: malformed token reply')
      end
    end
    if #r < 3 then
      return redis.error_reply('ERR keygate charge: malformed token reply')
    end
    return r
  end
end

local function reply(status, org, key, rates)
  local r = {status, org, key}
  local fmt = '%d %d %d'
  if rates then
    for i = 1, #rates do r[3 + i] = rates[i] end
    fmt = fmt .. string.rep(' %d', #rates)
  end
  if tokenTTL > 0 then
    redis.call('SET', KEYS[3], string.format(fmt, unpack(r)), 'PX', tokenTTL)
  end
  return r
end

local nonceAt = tonumber(ARGV[6])
local now = tonumber(ARGV[7])
if nonceAt >= 0 then
  local used = redis.call('GET', KEYS[4])
  if used then
    local u = tonumber(used)
    if u == 0 or u > now then
      return reply(-2, 0, 0)
    end
  end
end

local cost, orgMax, keyMax = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local org = tonumber(redis.call('GET', KEYS[1]) or '0')
local key = tonumber(redis.call('GET', KEYS[2]) or '0')
local leased = 0
if keyMax >= 0 then
  -- A key without a max may have had requests counted from lease blocks
  -- earlier in the window: they count against a max it has now.
  -- The field is KEYS[2] after "kg:{<org>}:q:key:" (an org id has no brace).
  local _, e = string.find(KEYS[2], '}:q:key:', 1, true)
  leased = tonumber(redis.call('HGET', KEYS[5], string.sub(KEYS[2], e + 1)) or '0')
  key = key + leased
end
if cost > 0 then
  if keyMax >= 0 and key + cost > keyMax then
    return reply(0, org, key)
  end
  if orgMax >= 0 and org + cost > orgMax then
    return reply(-1, org, key)
  end
end

local n = #KEYS - 5
local capSlack = 1000000 -- µs, see the cap below
local rates, tats, capped

-- storeCapped stores the capped state of the limits this charge does not
-- advance (see the GCRA rule above).
local function storeCapped()
  if not capped or cost == 0 then return end
  for i, tat in pairs(capped) do
    if not tats[i] then
      redis.call('SET', KEYS[5 + i], string.format('%d', tat),
        'PX', math.floor((rates[2 * i - 1] + 999) / 1000) + 60000)
    end
  end
end
if n > 0 then
  local t = tonumber(ARGV[8])
  local refused = false
  rates, tats = {}, {}
  for i = 1, n do
    local interval, burst = tonumber(ARGV[6 + 3 * i]), tonumber(ARGV[7 + 3 * i])
    local debt = 0 -- a limit without state is full
    local v = redis.call('GET', KEYS[5 + i])
    if v then
      local tat = tonumber(v)
      if not tat then
        return redis.error_reply('ERR keygate charge: malformed rate limit state')
      end
      debt = math.max(tat - t, 0)
      -- A debt beyond a full window is what an earlier, different limit
      -- left: it carries over as an empty bucket of this one, no more, and
      -- is stored so (below) even if this charge is refused, else a raised
      -- limit would keep the old wait.
      -- Only a debt more than capSlack beyond the window is stored capped:
      -- a smaller excess is what a charge dated a little before the
      -- limit's last one sees (requests race to Redis, lease holders
      -- reserve up to their own instant plus the window), and lowering it
      -- would hand out slots twice.
      if debt > burst * interval then
        if debt > burst * interval + capSlack then
          capped = capped or {}
          capped[i] = t + burst * interval
        end
        debt = burst * interval
      end
    end
    local limited = 0
    if cost > 0 then
      if cost > burst or debt + cost * interval > burst * interval then
        limited = 1
        if ARGV[8 + 3 * i] ~= '1' then refused = true end
      else
        tats[i] = t + debt + cost * interval
      end
    end
    rates[2 * i - 1], rates[2 * i] = debt, limited
  end
  if refused then
    storeCapped()
    return reply(-3, org, key, rates)
  end
  storeCapped()
  for i = 1, n do
    if tats[i] then rates[2 * i - 1] = tats[i] - t end
  end
end

if cost > 0 then
  org = redis.call('INCRBY', KEYS[1], ARGV[1])
  key = redis.call('INCRBY', KEYS[2], ARGV[1])
  -- A counter INCRBY just created has the cost as its value; one with that
  -- value otherwise already has its expiry (lease.lua sets it when it
  -- creates one), which EXPIREAT sets again to the same instant.
  if tonumber(ARGV[4]) > 0 then
    if org == cost then redis.call('EXPIREAT', KEYS[1], ARGV[4]) end
    if key == cost then redis.call('EXPIREAT', KEYS[2], ARGV[4]) end
  end
  key = key + leased
  for i = 1, n do
    if tats[i] then
      local debt = rates[2 * i - 1]
      -- The TAT needs %d (more digits than Lua's own number format keeps);
      -- the PX, below 2^32, does not.
      redis.call('SET', KEYS[5 + i], string.format('%d', tats[i]),
        'PX', math.floor((debt + 999) / 1000) + 60000)
    end
  end
end

if nonceAt == 0 then
  redis.call('SET', KEYS[4], '0')
elseif nonceAt > now then
  redis.call('SET', KEYS[4], ARGV[6], 'PXAT', ARGV[6])
end
return reply(1, org, key, rates)
