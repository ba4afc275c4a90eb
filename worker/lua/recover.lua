-- The sweeper's pass over expired leases.
-- * leased (never sent, or waiting out a backoff): dispatch again.
-- * sending, backend idempotent: send again; reconcilable: read it back first.
-- * sending otherwise: the worker died or stalled mid-call; the request may
--   have applied. Mark its commands in_doubt; never resend silently.
-- ARGV: prefix, retention, max, dispatch_lease_ms, max_attempts
-- Returns {in_doubt_count, batch ids to dispatch...}
local max, lease_ms = tonumber(ARGV[3]), tonumber(ARGV[4])
local max_attempts = tonumber(ARGV[5])
local now = now_ms()
local out = {0}
local doubted = 0
for _, id in ipairs(redis.call('ZRANGEBYSCORE', LEASES, '-inf', now, 'LIMIT', 0, max)) do
  local bk = batch_key(id)
  local b = redis.call('HMGET', bk, 'st', 'pid', 'members', 'on_unknown', 'n', 'kind', 'att')
  if not b[1] then
    redis.call('ZREM', LEASES, id)
  elseif b[1] == 'leased' or ((b[4] == 'resend' or b[4] == 'reconcile') and tonumber(b[7]) < max_attempts) then
    -- Idempotent backend: send again. Reconcilable one: read back first.
    if b[1] == 'sending' then
      redis.call('HSET', bk, 'rec', b[4] == 'reconcile' and 1 or 0)
    end
    redis.call('HSET', bk, 'st', 'leased', 'tok', '')
    redis.call('ZADD', LEASES, now + lease_ms, id)
    out[#out + 1] = id
  else
    -- (also an idempotent backend's batch past its attempts: still unknown)
    -- worker/resolve.py knows this error by 'expired during the backend call'.
    finalize_members(b[6], b[2], id, cjson.decode(b[3]), 'in_doubt',
      'lease ' .. id .. ' expired during the backend call: the worker died or stalled; the grant may or may not be applied',
      now)
    doubted = doubted + tonumber(b[5])
    redis.call('DEL', bk)
    redis.call('ZREM', LEASES, id)
  end
end
out[1] = doubted
return done(out)
