-- Replay: put failed / in_doubt commands of one kind back into their lane's
-- buffer, the same path a new command takes, with the decision and the
-- history entry in the same atomic step (two operators replaying at once
-- replay once).
-- ARGV: prefix, retention, actor, allow_in_doubt (1/0), kind, then per command:
--       project_id, record id (external_purchase_id, or the operation id)
-- Returns one code per command:
--   replayed | missing | granted | revoked | rejected | noop (applied, refused
--   or with nothing to do: never again) | refunded (a grant with a revoke:
--   never again) | needs_force | busy (pending/sending/waiting)
local actor, allow_in_doubt, kind = ARGV[3], ARGV[4] == '1', ARGV[5]
local now = now_ms()
local out = {}
for i = 6, #ARGV, 2 do
  local pid, epid = ARGV[i], ARGV[i + 1]
  local rk = rec_key(kind, pid, epid)
  local r = redis.call('HMGET', rk, 'st', 'att', 'hist', 'err')
  local st = r[1]
  if not st then
    out[#out + 1] = 'missing'
  elseif st == 'granted' or st == 'revoked' or st == 'rejected' or st == 'noop' then
    out[#out + 1] = st
  elseif kind == 'grant' and redis.call('EXISTS', rec_key('revoke', pid, epid)) == 1 then
    out[#out + 1] = 'refunded'
  elseif st == 'in_doubt' and not allow_in_doubt then
    out[#out + 1] = 'needs_force'
  elseif st ~= 'failed' and st ~= 'in_doubt' then
    out[#out + 1] = 'busy'
  else
    local hist = r[3] and cjson.decode(r[3]) or {}
    hist[#hist + 1] = {event = 'replay', by = actor, at = now, from_status = st,
                       attempts_before = tonumber(r[2]) or 0, last_error = r[4] or ''}
    redis.call('ZREM', idx_key(kind, st), pid .. ':' .. epid)
    redis.call('HSET', rk, 'st', 'pending', 'hist', cjson.encode(hist), 'err', '', 'cpl', '', 'res', '')
    -- Waiting again: no expiry until the new outcome sets the retention.
    redis.call('PERSIST', rk)
    enqueue(kind, pid, epid, now)
    out[#out + 1] = 'replayed'
  end
end
return out
