-- Extend the lease of a batch whose call is still in progress, if the caller
-- still holds it (same fencing token, still 'sending').
-- ARGV: prefix, retention, batch_id, token, lease_ms
-- Returns 1 if renewed, 0 if the batch is no longer the caller's.
local id, token, lease_ms = ARGV[3], ARGV[4], tonumber(ARGV[5])
local b = redis.call('HMGET', batch_key(id), 'st', 'tok')
if b[1] ~= 'sending' or b[2] ~= token then return 0 end
redis.call('ZADD', LEASES, now_ms() + lease_ms, id)
return 1
