-- ratelease.lua: one call of a lease holder (a sidecar, quota/lease) for the
-- rate limits of one charge: give back the unspent part of the holder's last
-- block of each limit, then, if every enforced limit has room for the
-- charge's cost, reserve for each limit a block of consecutive emission slots
-- of its GCRA, atomically.
--
-- KEYS[2i-1], i = 1..n: rate limit i's state, the key charge.lua uses
--         (kg:{<org>}:rl:org:<name> or kg:{<org>}:rl:key:<key>:<name>): its
--         theoretical arrival time (TAT), unix µs. Its format is charge.lua's,
--         so sidecars charging per request (of this or an earlier version)
--         and lease holders share the limit exactly.
-- KEYS[2i]   its holder key (kg:{<org>}:rlh:…): the holder whose block ends
--         at the TAT, set by a grant, deleted by a give-back. It makes a
--         give-back safe to retry: a TAT that came back to the same instant
--         through someone else's slots never matches it.
--
-- ARGV[1] holder id
-- ARGV[2] the call's instant t, unix µs (the script never reads the clock)
-- ARGV[3] cost c of the charge, >= 0; 0 reserves nothing (a give-back only)
-- ARGV[4] share: a block is at most 1/share of the free slots (>= 1) ...
-- per limit i, the eight from ARGV[5 + 8(i-1)]:
--   interval I (µs per unit, >= 1), burst B (units, >= 1), 1 = shadow,
--   want (units wanted, >= c), waiting (units requests waiting for this block
--   need: ... or that many, if more, up to the free slots), horizon H (µs,
--   0 <= H <= B*I: a block reaches at least t + H, see below), and the
--   give-back: E the end of the holder's block (0 = nothing to give back)
--   and L its local TAT (the start of its unspent part, <= E)
--
-- Reply {status, then five integers per limit}: status 1, or -3 when an
-- enforced limit has no room for c (nothing is reserved; give-backs and
-- capped states are stored all the same). Per limit: 1 if it would refuse c
-- (else 0), its debt before any grant (TAT minus t after give-back and cap,
-- µs, >= 0), the start of its grant, the grant (units, 0 = none) and its TAT
-- after the call (-1 = no state).
--
-- GCRA, as charge.lua: a limit with interval I and burst B has room for c at
-- t iff c <= B and max(TAT, t) + c*I - t <= B*I. A grant of g >= c units is
-- the slots [max(TAT, t), max(TAT, t) + g*I): TAT advances by g*I, so every
-- slot of a block counts as used from the grant on, spent or not, and is
-- never counted twice. A block that would end before t + H is extended to
-- it: slots are spent no earlier than they start, so a sidecar whose own
-- traffic is below the limit's rate needs slots up to H ahead to admit for
-- H; the slots between the TAT and t + H are the limit's idle capacity,
-- taken by the first holder after the TAT fell behind, and the others' blocks
-- stack after it. A give-back applies only when the TAT is still the
-- end of the holder's block (nobody took slots after it): the TAT goes back
-- to L. A stored TAT more than B*I ahead counts as t + B*I and is stored so,
-- as in charge.lua. Every number stays an integer below 2^53.

local h, t = ARGV[1], tonumber(ARGV[2])
local cost, share = tonumber(ARGV[3]), tonumber(ARGV[4])
local n = #KEYS / 2
local capSlack = 1000000 -- µs: see the cap below

local function px(tat)
  return math.floor((math.max(tat - t, 0) + 999) / 1000) + 60000
end

local lims = {}
local refused = false
for i = 1, n do
  local a = 4 + 8 * (i - 1)
  local l = {
    interval = tonumber(ARGV[a + 1]), burst = tonumber(ARGV[a + 2]), shadow = ARGV[a + 3] == '1',
    want = tonumber(ARGV[a + 4]), waiting = tonumber(ARGV[a + 5]), horizon = tonumber(ARGV[a + 6]),
    store = false,
  }
  local e, from = tonumber(ARGV[a + 7]), tonumber(ARGV[a + 8])
  local v = redis.call('GET', KEYS[2 * i - 1])
  if v then
    l.tat = tonumber(v)
    if not l.tat then
      return redis.error_reply('ERR keygate rate lease: malformed rate limit state')
    end
  end
  if e > 0 and l.tat == e and redis.call('GET', KEYS[2 * i]) == h then
    l.tat, l.store = from, true
    redis.call('DEL', KEYS[2 * i])
  end
  l.debt = 0
  if l.tat then
    l.debt = math.max(l.tat - t, 0)
    if l.debt > l.burst * l.interval then
      -- Stored only when left by a changed limit: a debt less than capSlack
      -- beyond the window is what a charge dated before the limit's last
      -- grant sees, and lowering it would hand out slots twice.
      if l.debt > l.burst * l.interval + capSlack and cost > 0 then
        l.tat, l.store = t + l.burst * l.interval, true
      end
      l.debt = l.burst * l.interval
    end
  end
  l.limited = 0
  if cost > 0 and (cost > l.burst or l.debt + cost * l.interval > l.burst * l.interval) then
    l.limited = 1
    if not l.shadow then refused = true end
  end
  lims[i] = l
end

local r = {1}
if refused then r[1] = -3 end
for i = 1, n do
  local l = lims[i]
  local start, grant = 0, 0
  if not refused and cost > 0 and l.limited == 0 then
    start = t + l.debt
    local free = math.floor((l.burst * l.interval - l.debt) / l.interval)
    grant = math.min(l.want, math.max(cost, math.floor(free / share), math.min(free, l.waiting)), free)
    local reach = math.floor((math.min(l.horizon, l.burst * l.interval) - l.debt) / l.interval)
    grant = math.max(grant, math.min(reach, free))
    l.tat = start + grant * l.interval
    local ttl = px(l.tat)
    redis.call('SET', KEYS[2 * i - 1], string.format('%d', l.tat), 'PX', ttl)
    redis.call('SET', KEYS[2 * i], h, 'PX', ttl)
  elseif l.store then
    redis.call('SET', KEYS[2 * i - 1], string.format('%d', l.tat), 'PX', px(l.tat))
  end
  local base = 1 + 5 * (i - 1)
  r[base + 1], r[base + 2], r[base + 3], r[base + 4], r[base + 5] = l.limited, l.debt, start, grant, l.tat or -1
end
return r
