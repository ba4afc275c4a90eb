-- Mark a batch as being sent, under the caller's fencing token, and return
-- what to send. Called right before the HTTP request: only a batch in state
-- 'sending' can have reached the backend, and its commands say so.
-- ARGV: prefix, retention, batch_id, token, lease_ms, on_unknown (the
--       backend's policy for a lost answer: 'resend' | 'reconcile' | 'doubt',
--       kept on the batch for the sweeper), the lane's call budget spec (''
--       for none): every call is paid for with a token (take pays the
--       first); without one the batch waits (early)
-- Returns {'gone'} | {'busy'} | {'early'} (backing off, or waiting for a token) |
--         {'ok', attempt, reconcile_first (1/0), then per member: id, command
--          JSON, extra}: extra is a revoke's grant refund data ('' otherwise)
local id, token, lease_ms, on_unknown, budget = ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6], ARGV[7]
local bk = batch_key(id)
local b = redis.call('HMGET', bk, 'st', 'tok', 'pid', 'members', 'kind', 'nbf', 'rec', 'att', 'paid')
if not b[1] then return {'gone'} end
local now = now_ms()
local pid, kind = b[3], b[5]

local function member(epid, body)
  local extra = ''
  if kind == 'revoke' then
    local g = claim_get('grant', pid, epid, now)
    extra = g and g.refund or ''
  end
  return {epid, command_of(body), extra}
end

local out = {'ok'}
if b[1] == 'sending' then
  -- Someone holds it; unless it is us asking again (a retried round trip).
  if b[2] ~= token then return {'busy'} end
  out[2], out[3] = b[8], 0
  for _, epid in ipairs(cjson.decode(b[4])) do
    local _, body = rec_read(rec_key(kind, pid, epid))
    for _, v in ipairs(member(epid, body)) do out[#out + 1] = v end
  end
  return out
elseif b[6] and now < tonumber(b[6]) then
  -- A duplicate dispatch during a backoff: the sweeper sends it when due.
  return {'early'}
end
-- This attempt's call is not paid for yet (a retry, a split half; take paid
-- the first): spend a token, or wait for one.
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
local rows = {}
for _, epid in ipairs(cjson.decode(b[4])) do
  local rk = rec_key(kind, pid, epid)
  local hdr, body = rec_read(rk)
  if hdr and (hdr.st == 'pending' or (hdr.st == 'sending' and hdr.bat == id)) then
    kept[#kept + 1] = epid
    hdr.st, hdr.bat, hdr.snt, hdr.att = 'sending', id, now, (hdr.att or 0) + 1
    rec_write(rk, hdr, body, nil)
    rows[#rows + 1] = member(epid, body)
  end
end
if #kept == 0 then
  redis.call('DEL', bk)
  redis.call('ZREM', LEASES, id)
  return {'gone'}
end
redis.call('HSET', bk, 'st', 'sending', 'tok', token, 'on_unknown', on_unknown, 'sent', now, 'begun', 1,
  'members', cjson.encode(kept), 'n', #kept, 'rec', 0, 'att', attempt)
redis.call('ZADD', LEASES, now + lease_ms, id)
out[2], out[3] = attempt, b[7] == '1' and 1 or 0
for _, row in ipairs(rows) do
  for _, v in ipairs(row) do out[#out + 1] = v end
end
return out
