-- Mark a batch as being sent, under the caller's fencing token, and return
-- what to send. Called right before the HTTP request: only a batch in state
-- 'sending' can have reached the backend, and its commands say so.
-- ARGV: prefix, batch_id, token, lease_ms, idempotent (1/0)
-- Returns {'gone'} | {'busy'} | {'early'} (backing off) | {'ok', project_id, attempt, kind, members_json, cmds_json}
local id, token, lease_ms, idem = ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
local bk = batch_key(id)
local b = redis.call('HMGET', bk, 'st', 'tok', 'pid', 'members', 'kind', 'cmds', 'nbf')
if not b[1] then return {'gone'} end
local now = now_ms()
local pid = b[3]
if b[1] == 'sending' then
  -- Someone holds it; unless it is us asking again (a retried round trip).
  if b[2] ~= token then return {'busy'} end
elseif b[7] and now < tonumber(b[7]) then
  -- A duplicate dispatch during a backoff: the sweeper sends it when due.
  return {'early'}
else
  redis.call('HSET', bk, 'st', 'sending', 'tok', token, 'idem', idem, 'sent', now, 'begun', 1)
  redis.call('HINCRBY', bk, 'att', 1)
  redis.call('ZADD', LEASES, now + lease_ms, id)
  for _, epid in ipairs(cjson.decode(b[4])) do
    local rk = rec_key(b[5], pid, epid)
    redis.call('HSET', rk, 'st', 'sending', 'bat', id, 'snt', now)
    redis.call('HINCRBY', rk, 'att', 1)
  end
end
return {'ok', pid, redis.call('HGET', bk, 'att'), b[5], b[4], b[6]}
