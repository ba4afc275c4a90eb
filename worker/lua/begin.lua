-- Mark a batch as being sent, under the caller's fencing token, and return
-- what to send. Called right before the HTTP request; only a batch in state
-- 'sending' can have reached the backend.
-- ARGV: prefix, batch_id, token, lease_ms, idempotent (1/0)
-- Returns {'gone'} | {'busy'} | {'ok', project_id, attempt, kind, epid1, cmd1, ...}
local id, token, lease_ms, idem = ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
local bk = batch_key(id)
local b = redis.call('HMGET', bk, 'st', 'tok', 'pid', 'members', 'kind')
if not b[1] then return {'gone'} end
local pid = b[3]
local members = cjson.decode(b[4])
if b[1] == 'sending' then
  -- Someone holds it; unless it is us asking again (a retried round trip).
  if b[2] ~= token then return {'busy'} end
else
  local now = now_ms()
  redis.call('HSET', bk, 'st', 'sending', 'tok', token, 'idem', idem, 'sent', now)
  redis.call('HINCRBY', bk, 'att', 1)
  redis.call('ZADD', LEASES, now + lease_ms, id)
  for _, epid in ipairs(members) do
    local rk = rec_key(pid, epid)
    redis.call('HINCRBY', rk, 'att', 1)
    redis.call('HSET', rk, 'snt', now)
  end
end
local out = {'ok', pid, redis.call('HGET', bk, 'att'), b[5]}
for _, epid in ipairs(members) do
  out[#out + 1] = epid
  out[#out + 1] = redis.call('HGET', rec_key(pid, epid), 'cmd') or ''
end
return out
