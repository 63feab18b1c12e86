-- read_changes.lua reads the change log after a position, together with what
-- a follower needs to know whether anything after that position was trimmed
-- away, in one atomic step.
--
-- KEYS[1]  the change log stream          kg:changes
-- ARGV[1]  the id read up to, or "" for the log's end
-- ARGV[2]  at most this many entries
--
-- Reply: {exists (0/1), entries-added, length, last-generated-id, entries},
-- entries as XRANGE returns them (none when ARGV[1] is "").
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {0, 0, 0, '0-0', {}}
end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local added, length, last = 0, 0, '0-0'
for i = 1, #info, 2 do
  local k = info[i]
  if k == 'entries-added' then
    added = info[i + 1]
  elseif k == 'length' then
    length = info[i + 1]
  elseif k == 'last-generated-id' then
    last = info[i + 1]
  end
end
local entries = {}
if ARGV[1] ~= '' then
  entries = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', ARGV[2])
end
return {1, added, length, last, entries}
