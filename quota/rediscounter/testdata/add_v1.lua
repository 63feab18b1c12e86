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

local out = {}
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
  -- The total as Redis keeps it: a Lua number (a double) would round
  -- totals past 2^53.
  out[i] = redis.call('GET', KEYS[i])
end
for i = 1, #KEYS do
  local exp = tonumber(ARGV[2 * i])
  if exp > 0 then
    redis.call('EXPIREAT', KEYS[i], exp)
  end
end
return out
