-- Prelude shared by every script; worker/ledger.py puts it in front of each.
-- ARGV[1] is always the key prefix (worker/keys.py documents every key).

-- Redis 6 replicates scripts verbatim unless told otherwise, and then refuses
-- writes after TIME. Redis 7 always replicates effects; the call is a no-op.
if redis.replicate_commands then redis.replicate_commands() end

local P = ARGV[1]
local LEASES = P .. ':leases'
local LANES = P .. ':lanes'
-- Only outcomes (and conflicts) are indexed per command. 'pending' and
-- 'sending' are read off the buffers and batches, which saves two index
-- writes per command on the hot path.
local INDEXED = {granted = true, rejected = true, failed = true, in_doubt = true}

-- Server time, so that leases written by one machine and read by another
-- never depend on their clocks agreeing.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function rec_key(pid, epid) return P .. ':rec:' .. pid .. ':' .. epid end
local function batch_key(id) return P .. ':batch:' .. id end
local function idx_key(st) return P .. ':idx:' .. st end

-- Write a final outcome: status, answer, error, the status index, retention,
-- and the stream entry the purchase pipeline follows. Always together.
local function finalize(rk, pid, epid, old, new, res, err, now, ttl, maxlen)
  local m = pid .. ':' .. epid
  if INDEXED[old] then redis.call('ZREM', idx_key(old), m) end
  redis.call('ZADD', idx_key(new), now, m)
  redis.call('HSET', rk, 'st', new, 'cpl', now, 'res', res, 'err', err)
  redis.call('PEXPIRE', rk, ttl)
  redis.call('XADD', P .. ':outcomes', 'MAXLEN', '~', maxlen, '*',
    'project_id', pid, 'external_purchase_id', epid, 'status', new, 'at', now)
end

-- Finalize every member of a batch that is still 'sending'.
local function finalize_members(pid, members, new, err, now, ttl, maxlen)
  for _, epid in ipairs(members) do
    local rk = rec_key(pid, epid)
    if redis.call('HGET', rk, 'st') == 'sending' then
      finalize(rk, pid, epid, 'sending', new, '', err, now, ttl, maxlen)
    end
  end
end
