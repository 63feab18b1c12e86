-- add.lua: book meter deltas for one organization, all or nothing.
--
-- KEYS[i]   meter counter i  kg:{<org>}:m:<meter>:<window>  (one slot: the org's)
-- ARGV[2i-1] delta i (a signed integer)
-- ARGV[2i]   expire-at of counter i, unix seconds, 0 = never
--
-- Reply: the totals right after each delta as decimal strings, in order (a counter named twice
-- gets its running total each time); or, when a delta would take a counter
-- out of the int64 range, the error "ERR keygate add: overflow" with every
-- delta applied before it undone, so nothing is booked. The script never
-- reads the clock.

-- Steady traffic costs one INCRBY per meter: the total is INCRBY's own
-- reply, exact as a Lua number below 2^53 (a GET reads it past that), and
-- EXPIREAT is sent only for a counter that was zero or absent before the
-- delta (one that existed already got its expiry when it was created, by
-- this script or an earlier version of it, which always sent EXPIREAT).

local exact = 2 ^ 53
local out, fresh = {}, {}
for i = 1, #KEYS do
  local total = redis.pcall('INCRBY', KEYS[i], ARGV[2 * i - 1])
  if type(total) == 'table' and total.err then
    for j = i - 1, 1, -1 do
      -- Undoing an applied increment restores an earlier value: it cannot
      -- overflow.
      redis.call('DECRBY', KEYS[j], ARGV[2 * j - 1])
    end
    return redis.error_reply('ERR keygate add: overflow')
  end
  local delta = tonumber(ARGV[2 * i - 1])
  if math.abs(total) < exact and math.abs(delta) < exact then
    out[i] = string.format('%d', total)
    fresh[i] = total == delta
  else
    -- The total as Redis keeps it: a Lua number (a double) would round
    -- totals past 2^53.
    out[i] = redis.call('GET', KEYS[i])
    fresh[i] = true
  end
end
for i = 1, #KEYS do
  local exp = tonumber(ARGV[2 * i])
  if exp > 0 and fresh[i] then
    redis.call('EXPIREAT', KEYS[i], exp)
  end
end
return out
