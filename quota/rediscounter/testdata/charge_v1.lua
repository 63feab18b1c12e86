-- charge.lua: admit a request of cost ARGV[1] iff the key's and the org's
-- counters both stay within their max; count it in both, atomically.
--
-- KEYS[1] org counter  kg:{<org>}:q:org:<window>
-- KEYS[2] key counter  kg:{<org>}:q:key:<key>:<window>
-- KEYS[3] token        kg:{<org>}:tok:<token>    (untouched when ARGV[5] is 0)
-- KEYS[4] nonce        kg:{<org>}:nonce:<nonce>  (untouched when ARGV[6] is -1)
--
-- ARGV[1] cost, >= 0 (0 checks no limit and counts nothing)
-- ARGV[2] org max, -1 = unlimited
-- ARGV[3] key max, -1 = none
-- ARGV[4] counters' expire-at, unix seconds, 0 = never (period "none")
-- ARGV[5] token TTL, milliseconds, 0 = no token
-- ARGV[6] nonce expire-at, unix milliseconds, 0 = never, -1 = no nonce
-- ARGV[7] the charge's instant, unix milliseconds: a nonce is used while its
--         expire-at is later (0 = never expires). The script never reads the clock.
--
-- Reply {status, org used, key used}:
--    1 admitted: the usages after counting
--    0 refused by the key's max, -1 refused by the org's max (the key is
--      checked first): the usages, unchanged
--   -2 nonce already used: {-2, 0, 0}
-- In this order: (a) a token seen before returns its stored reply unchanged,
-- writing nothing, so a retried request counts once; (b) a used nonce is a
-- replay; (c) both limits are checked before anything is incremented; (d) an
-- admitted charge increments both counters, sets their EXPIREAT and marks the
-- nonce; (e) the reply is stored under the token. A refusal writes nothing but
-- the token.

local tokenTTL = tonumber(ARGV[5])
if tokenTTL > 0 then
  local prev = redis.call('GET', KEYS[3])
  if prev then
    local s, o, k = string.match(prev, '^(%-?%d+) (%-?%d+) (%-?%d+)$')
    if not s then
      return redis.error_reply('ERR keygate charge: malformed token reply')
    end
    return {tonumber(s), tonumber(o), tonumber(k)}
  end
end

local function reply(status, org, key)
  if tokenTTL > 0 then
    redis.call('SET', KEYS[3], string.format('%d %d %d', status, org, key), 'PX', tokenTTL)
  end
  return {status, org, key}
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
if cost > 0 then
  if keyMax >= 0 and key + cost > keyMax then
    return reply(0, org, key)
  end
  if orgMax >= 0 and org + cost > orgMax then
    return reply(-1, org, key)
  end
  org = redis.call('INCRBY', KEYS[1], ARGV[1])
  key = redis.call('INCRBY', KEYS[2], ARGV[1])
  -- Only this script writes the counters, so one that INCRBY just created
  -- (its value is the cost) is the only one without its expiry yet.
  if tonumber(ARGV[4]) > 0 then
    if org == cost then redis.call('EXPIREAT', KEYS[1], ARGV[4]) end
    if key == cost then redis.call('EXPIREAT', KEYS[2], ARGV[4]) end
  end
end

if nonceAt == 0 then
  redis.call('SET', KEYS[4], '0')
elseif nonceAt > now then
  redis.call('SET', KEYS[4], ARGV[6], 'PXAT', ARGV[6])
end
return reply(1, org, key)
