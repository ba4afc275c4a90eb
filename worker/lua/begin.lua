-- Mark a batch as being sent, under the caller's fencing token, and return
-- what to send. Called right before the HTTP request: only a batch in state
-- 'sending' can have reached the backend, and its commands say so.
-- ARGV: prefix, retention, batch_id, token, lease_ms, unknown-outcome policy of the backend
--       ('1' resend, 'r' reconcile, '0' in_doubt), kept for the sweeper, the
--       lane's call budget spec ('' for none): every call is paid for with a
--       token (take pays the first); without one the batch waits (early)
-- Returns {'gone'} | {'busy'} | {'early'} (backing off) |
--         {'ok', project_id, attempt, kind, members_json, cmds_json, reconcile_first (1/0)}
local id, token, lease_ms, idem, budget = ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6], ARGV[7]
local bk = batch_key(id)
local b = redis.call('HMGET', bk, 'st', 'tok', 'pid', 'members', 'kind', 'nbf', 'rec', 'att', 'paid')
if not b[1] then return {'gone'} end
local now = now_ms()
local pid, kind = b[3], b[5]
local cmds = {}
if b[1] == 'sending' then
  -- Someone holds it; unless it is us asking again (a retried round trip).
  if b[2] ~= token then return {'busy'} end
elseif b[6] and now < tonumber(b[6]) then
  -- A duplicate dispatch during a backoff: the sweeper sends it when due.
  return {'early'}
else
  -- This attempt's call is not paid for yet (a retry, a split half; take
  -- paid the first): spend a token, or wait for one.
  local attempt = (tonumber(b[8]) or 0) + 1
  if (tonumber(b[9]) or 0) < attempt then
    local wait = budget_wait(budget, now, true)
    if wait > 0 then
      redis.call('HSET', bk, 'nbf', now + wait)
      redis.call('ZADD', LEASES, now + wait, id)
      return {'early'}
    end
    redis.call('HSET', bk, 'paid', attempt)
  end
  -- The last moment before sending: keep only members still waiting to be
  -- sent (pending) or already ours (a retry). A grant cancelled by a revoke
  -- since it was taken is dropped here and never leaves.
  local kept = {}
  for _, epid in ipairs(cjson.decode(b[4])) do
    local rk = rec_key(kind, pid, epid)
    local r = redis.call('HMGET', rk, 'st', 'bat', 'cmd', 'rq')
    if r[1] == 'pending' or (r[1] == 'sending' and r[2] == id) then
      kept[#kept + 1] = epid
      cmds[#cmds + 1] = r[3] or revoke_body(pid, epid, r[4])
      redis.call('HSET', rk, 'st', 'sending', 'bat', id, 'snt', now)
      redis.call('HINCRBY', rk, 'att', 1)
    end
  end
  if #kept == 0 then
    redis.call('DEL', bk)
    redis.call('ZREM', LEASES, id)
    return {'gone'}
  end
  b[4] = cjson.encode(kept)
  redis.call('HSET', bk, 'st', 'sending', 'tok', token, 'idem', idem, 'sent', now, 'begun', 1,
    'members', b[4], 'n', #kept, 'rec', 0)
  redis.call('HINCRBY', bk, 'att', 1)
  redis.call('ZADD', LEASES, now + lease_ms, id)
end
if b[1] == 'sending' then
  -- Asked again by the holder: read the bodies once more.
  for _, epid in ipairs(cjson.decode(b[4])) do
    local r = redis.call('HMGET', rec_key(kind, pid, epid), 'cmd', 'rq')
    cmds[#cmds + 1] = r[1] or revoke_body(pid, epid, r[2])
  end
end
return {'ok', pid, redis.call('HGET', bk, 'att'), kind, b[4], '[' .. table.concat(cmds, ',') .. ']',
  b[7] == '1' and 1 or 0}
