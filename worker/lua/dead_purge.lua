-- Purge dead letters (grants dead purge): each one's hash and its index entry
-- together, so no index entry points at nothing and no letter is left unlisted.
-- Safe to run twice (a second run finds nothing).
-- ARGV: prefix, retention, then the dead letter ids
-- Returns per id: 1 if anything of it was removed, 0 if it was not there.
local IDX = P .. ':idx:dead'
local out = {}
for i = 3, #ARGV do
  local id = ARGV[i]
  local removed = redis.call('DEL', P .. ':dead:' .. id) + redis.call('ZREM', IDX, id)
  out[#out + 1] = removed > 0 and 1 or 0
end
return out
