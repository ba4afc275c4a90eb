-- Purge dead letters (grants dead purge): each one's hash and its index entry
-- together, so no index entry points at nothing and no letter is left unlisted.
-- Safe to run twice (a second run finds nothing).
-- ARGV: prefix, retention, then the dead letter ids
-- Returns per id: 1 if the letter was there, 0 if not (an index entry left
-- by a letter that expired is removed all the same).
local IDX = P .. ':idx:dead'
local out = {}
for i = 3, #ARGV do
  local id = ARGV[i]
  out[#out + 1] = redis.call('DEL', P .. ':dead:' .. id)
  redis.call('ZREM', IDX, id)
end
return out
