-- Undo a begin whose call was never made (a replica did not confirm the begin
-- in time: acting on a state a failover could lose is what begin's wait
-- prevents), under the same fencing token: the batch is leased again and
-- its members wait for the next attempt as they did before this one.
-- ARGV: prefix, retention, batch_id, token, retry_in_ms
-- Returns 1 if undone, 0 if the batch is no longer the caller's.
local id, token, retry_ms = ARGV[3], ARGV[4], tonumber(ARGV[5])
local bk = batch_key(id)
local b = redis.call('HMGET', bk, 'st', 'tok', 'pid', 'kind', 'members', 'att', 'paid')
if b[1] ~= 'sending' or b[2] ~= token then return 0 end
local now = now_ms()
for _, epid in ipairs(cjson.decode(b[5])) do
  local rk = rec_key(b[4], b[3], epid)
  local hdr, body = rec_read(rk)
  if hdr and hdr.st == 'sending' and hdr.bat == id then
    hdr.att = math.max(0, (hdr.att or 1) - 1)
    rec_write(rk, hdr, body, nil)
  end
end
-- The call was not made: neither the attempt nor its token is spent.
redis.call('HSET', bk, 'st', 'leased', 'tok', '', 'att', math.max(0, (tonumber(b[6]) or 1) - 1),
  'paid', math.max(0, (tonumber(b[7]) or 1) - 1), 'nbf', now + retry_ms, 'err',
  'the begin was not confirmed by a replica in time: not sent')
redis.call('ZADD', LEASES, now + retry_ms, id)
return 1
